"""`devid bench soak`: a short run of the mixed traffic answers every request and reports the
memory and descriptor slope of every devid process."""

from __future__ import annotations

import json
from pathlib import Path

from e2e import devid, ok


def test_bench_soak_json(tmp_path: Path) -> None:
    args = ("--minutes", "0.25", "--calibrate", "3", "--every", "1", "--clients", "3")
    result = ok(devid("bench", "soak", *args, "--json", cwd=tmp_path))
    figures = {f["name"]: f for f in map(json.loads, result.stdout.splitlines())}
    throughput = figures["soak.throughput"]
    assert throughput["value"] > 0 and 0.2 < throughput["ratio"] < 1.2  # paced at half of capacity
    assert figures["soak.errors"]["value"] == 0, figures["soak.errors"]
    assert figures["soak.p99"]["unit"] == "ms"
    processes = {"serve_supervisor", "serve_worker_0", "serve_worker_1", "gateway"}
    assert {f"soak.rss_slope.{p}" for p in processes} | {f"soak.fd_slope.{p}" for p in processes} <= set(
        figures
    )
    assert figures["soak.rss_slope.gateway"]["unit"] == "MB/h"
    assert list(tmp_path.iterdir()) == []
