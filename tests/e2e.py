"""Helpers for end-to-end tests: the installed `devid` script, openssl and the SQLite store, as a
person or a peer would use them. No mocks: every call here runs a real process or reads real files."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

#: The passphrase conftest puts in DEVID_PASSPHRASE for every test (kept in step with conftest.PASSPHRASE).
PASSPHRASE = "correct horse battery staple"


def devid_command() -> list[str]:
    """The console script pip installed next to this interpreter (else the one on PATH)."""
    beside = Path(sys.executable).parent / "devid"
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("devid")
    if found is None:
        pytest.fail("the `devid` console script is not installed (pip install -e .)")
    return [found]


DEVID = devid_command()


def devid_env(passphrase: str | None = PASSPHRASE, **extra: str) -> dict[str, str]:
    """os.environ (SOFTHSM2_CONF included) with DEVID_PASSPHRASE set, or removed when None."""
    env = {k: v for k, v in os.environ.items() if k not in ("DEVID_PASSPHRASE", "DEVID_HOME")}
    if passphrase is not None:
        env["DEVID_PASSPHRASE"] = passphrase
    env.update(extra)
    return env


def devid(
    *args: str | Path,
    passphrase: str | None = PASSPHRASE,
    cwd: Path | None = None,
    timeout: float = 120,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `devid ARGS` as a subprocess; never raises on a non-zero exit."""
    return subprocess.run(
        [*DEVID, *map(str, args)],
        capture_output=True,
        text=True,
        env=env if env is not None else devid_env(passphrase),
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def devid_many(
    calls: Sequence[Sequence[str | Path]],
    passphrase: str | None = PASSPHRASE,
    passphrases: Sequence[str | None] | None = None,
) -> list[subprocess.CompletedProcess[str]]:
    """Run independent `devid` calls concurrently (each costs ~1.5 s, mostly interpreter start and
    imports); `passphrases`, if given, holds one passphrase per call."""
    each = list(passphrases) if passphrases is not None else [passphrase] * len(calls)
    assert len(each) == len(calls)
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda args, p: devid(*args, passphrase=p), calls, each))


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """Assert exit 0, showing both streams if not."""
    assert result.returncode == 0, (
        f"{' '.join(result.args)} exited {result.returncode}\n"
        f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return result


def flat(text: str) -> str:
    """Whitespace collapsed: a terminal-width wrap must not break a phrase the test looks for."""
    return " ".join(text.split())


def run(*args: str | Path, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """A peer tool (openssl, ...) that must succeed."""
    result = subprocess.run([*map(str, args)], capture_output=True, input=input, check=False)
    assert result.returncode == 0, (
        f"{' '.join(map(str, args))} exited {result.returncode}: {result.stdout!r} {result.stderr!r}"
    )
    return result


def openssl(*args: str | Path, input: bytes | None = None) -> str:
    return run("openssl", *args, input=input).stdout.decode()


def openssl_csr(
    directory: Path,
    name: str,
    *,
    newkey: Sequence[str] = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
    subject: str = "/CN=device",
    der: bool = False,
    extra: Sequence[str] = (),
) -> Path:
    """A CSR made by the openssl CLI (its key next to it), PEM unless `der`."""
    out = directory / (f"{name}.der" if der else f"{name}.csr")
    run(
        "openssl",
        "req",
        "-new",
        *newkey,
        "-nodes",
        "-subj",
        subject,
        "-keyout",
        directory / f"{name}.key",
        "-out",
        out,
        *(("-outform", "DER") if der else ()),
        *extra,
    )
    return out


def openssl_verify(root: Path, leaf: Path, untrusted: Path | None = None) -> str:
    """`openssl verify` must print `<leaf>: OK`."""
    args: list[str | Path] = ["verify", "-CAfile", root]
    if untrusted is not None:
        args += ["-untrusted", untrusted]
    out = openssl(*args, leaf)
    assert out.strip() == f"{leaf}: OK", out
    return out


def split_pem(data: str) -> list[str]:
    """Each `-----BEGIN CERTIFICATE-----` block of a PEM bundle, in order."""
    end = "-----END CERTIFICATE-----"
    return [block.strip() + "\n" + end + "\n" for block in data.split(end) if "BEGIN CERTIFICATE" in block]


def db_path(home: Path) -> Path:
    """The SQLite file of a home, read from its devid.toml."""
    url = tomllib.loads((home / "devid.toml").read_text())["db_url"]
    assert url.startswith("sqlite:///"), url
    return Path(url.removeprefix("sqlite:///"))


def query(home: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    """Read the home's store directly (read-only), as an auditor with the file would."""
    conn = sqlite3.connect(f"file:{db_path(home)}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def count(home: Path, table: str) -> int:
    value = query(home, f"SELECT count(*) FROM {table}")[0][0]
    assert isinstance(value, int)
    return value
