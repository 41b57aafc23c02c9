"""`devid demo --serve`: after the steps, the demo home is served on loopback with its dashboard;
the admin token for the login is in a 0600 file, never printed, and Ctrl-C stops the server."""

from __future__ import annotations

import asyncio
import queue
import re
import signal
import ssl
import stat
import subprocess
import threading
import time
from pathlib import Path

import aiohttp
from e2e import DEVID, devid_env

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def _lines(stream: object, out: queue.Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        out.put(line)
    out.put("")


def test_demo_serve_opens_the_dashboard(tmp_path: Path) -> None:
    home = tmp_path / "demo"
    args = (
        "demo",
        "--home",
        home,
        "--devices",
        "4",
        "--contract-devices",
        "2",
        "--sim-devices",
        "20",
        "--serve",
        "--port",
        "0",
    )
    proc = subprocess.Popen(
        [*DEVID, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=devid_env()
    )
    out: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, out), daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + 120
    try:
        while not any("dashboard: https://" in line for line in seen):
            line = out.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line, f"demo exited {proc.wait()}: {seen} {proc.stderr.read() if proc.stderr else ''}"
            seen.append(line)
        url = re.search(r"dashboard: (https://127\.0\.0\.1:\d+/ui)", "".join(seen))
        assert url is not None, seen
        token_file, trust_file = home / "dashboard-token", home / "tls" / "root.pem"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        assert (home / "report" / "index.html").is_file()

        async def log_in() -> str:
            tls = ssl.create_default_context(cafile=str(trust_file))  # the trust file the demo printed
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=tls), cookie_jar=aiohttp.CookieJar(unsafe=True)
            ) as client:
                async with client.get(f"{url.group(1)}/login") as answer:
                    assert answer.status == 200
                    csrf = CSRF.search(await answer.text())
                assert csrf is not None
                form = {"token": token, "csrf": csrf.group(1)}
                async with client.post(f"{url.group(1)}/login", data=form) as answer:
                    assert answer.status == 200 and answer.url.path == "/ui"
                    return await answer.text()

        overview = asyncio.run(log_in())
        assert "REVOKED" in overview  # the dashboard shows the demo's revoked lot
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    while (line := out.get(timeout=10)) != "":  # the rest, until the output closes
        seen.append(line)
    printed = "".join(seen)
    assert token not in printed and str(token_file) in printed.replace("\n", "")
    assert printed.rstrip().endswith("stopped"), printed
