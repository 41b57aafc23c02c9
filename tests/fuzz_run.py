"""Coverage-guided fuzzing of devid's parsers with atheris (libFuzzer): `tests/fuzz_targets.py`.

    python tests/fuzz_run.py --target all --seconds 600        # the long run
    python tests/fuzz_run.py --target csr --seconds 5 --json   # one target, figures as JSON lines

devid's modules are instrumented on import; the targets are set up once, then each is fuzzed in a
forked child (libFuzzer runs once per process) for `--seconds`, starting from its seeds and the
crash inputs kept in tests/fuzz_crashes/<target>/. Per target it prints the runs, runs per
second, and libFuzzer's coverage: `cov`, the branch edges of devid's code the inputs reached, and
`ft`, the features (edges with hit counts) the fuzzer kept inputs for. A crash's input is saved
under --artifacts and the exit status is 1: copy it into tests/fuzz_crashes/<target>/ once fixed,
and tests/test_fuzz.py replays it from then on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import atheris

#: devid's packages the targets reach: instrumenting all of devid triples the start-up time.
INSTRUMENTED = ["devid.pki", "devid.est", "devid.revocation", "devid.gateway", "devid.api", "devid.registry"]

with atheris.instrument_imports(include=INSTRUMENTED):
    import fuzz_targets

CRASHES = Path(__file__).parent / "fuzz_crashes"
_DONE = re.compile(r"#(\d+)\s+DONE\s+cov: (\d+) ft: (\d+)")
_STAT = re.compile(r"stat::(\w+):\s+(\d+)")


@dataclass(frozen=True)
class Figures:
    """What one target's run reached (libFuzzer's final statistics)."""

    target: str
    seconds: float
    runs: int
    runs_per_second: int
    cov: int
    ft: int
    crashed: bool
    artifacts: list[str]


def _child(target: fuzz_targets.Target, seconds: float, corpus: Path, artifacts: Path, log: Path) -> None:
    """Fuzz `target` in this (forked) process; libFuzzer exits it."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 2)
    os.dup2(fd, 1)
    args = [
        "fuzz_run",
        f"-max_total_time={max(1, round(seconds))}",
        "-print_final_stats=1",
        "-rss_limit_mb=2048",
        "-timeout=10",
        f"-artifact_prefix={artifacts}/{target.name}-",
        str(corpus),
    ]
    kept = CRASHES / target.name
    if kept.is_dir():
        args.append(str(kept))

    def run(data: bytes) -> None:
        try:
            target.run(data)
        except BaseException:
            # Kept by the harness: atheris' own crash report does not always write the input.
            (artifacts / f"{target.name}-crash-{hashlib.sha1(data).hexdigest()}").write_bytes(data)
            raise

    atheris.Setup(args, run)
    atheris.Fuzz()


def fuzz(target: fuzz_targets.Target, seconds: float, workdir: Path, artifacts: Path) -> Figures:
    corpus = workdir / f"corpus-{target.name}"
    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(target.seeds):
        (corpus / f"seed-{i}").write_bytes(seed)
    log = workdir / f"{target.name}.log"
    before = set(artifacts.iterdir())
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        try:
            _child(target, seconds, corpus, artifacts, log)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    text = log.read_text(errors="replace")
    done = _DONE.findall(text)
    stats = dict(_STAT.findall(text))
    runs = int(stats.get("number_of_executed_units", _last_int(text, "#")))
    crashed = os.waitstatus_to_exitcode(status) != 0
    if crashed:
        sys.stderr.write(text[-6000:])
    cov = max((int(c) for _, c, _ in done), default=_last_int(text, "cov"))
    ft = max((int(f) for _, _, f in done), default=_last_int(text, "ft"))
    return Figures(
        target.name,
        seconds,
        runs,
        int(stats.get("average_exec_per_sec", 0)),
        cov,
        ft,
        crashed,
        sorted(str(p) for p in set(artifacts.iterdir()) - before),
    )


def _last_int(text: str, field: str) -> int:
    found = re.findall(r"^#(\d+)" if field == "#" else rf"\b{field}: (\d+)", text, re.MULTILINE)
    return int(found[-1]) if found else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--target", default="all", help=f"all, or a comma-separated list of {fuzz_targets.NAMES}"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="time per target")
    parser.add_argument(
        "--artifacts", type=Path, default=Path("fuzz-artifacts"), help="where crash inputs go"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per target and line")
    args = parser.parse_args(argv)
    names = fuzz_targets.NAMES if args.target == "all" else tuple(args.target.split(","))
    args.artifacts.mkdir(parents=True, exist_ok=True)
    failed = False
    with tempfile.TemporaryDirectory(prefix="devid-fuzz-run-") as tmp, fuzz_targets.targets(names) as built:
        for name in names:
            figures = fuzz(built[name], args.seconds, Path(tmp), args.artifacts.resolve())
            failed |= figures.crashed
            if args.json:
                print(json.dumps(asdict(figures)), flush=True)
            else:
                state = f"CRASH {' '.join(figures.artifacts)}" if figures.crashed else "ok"
                print(
                    f"{name:<20} {figures.runs:>9} runs {figures.runs_per_second:>7}/s  "
                    f"cov {figures.cov:>5}  ft {figures.ft:>6}  {state}",
                    flush=True,
                )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
