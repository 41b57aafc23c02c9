"""Throw-away SoftHSM2 tokens for benchmarks and the demo (never for production keys).

SoftHSM reads SOFTHSM2_CONF when its library is first loaded by a process, so the variable is set
here before any PKCS#11 use, and stays set for the processes this one starts.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from devid.config import Pkcs11Settings
from devid.errors import ConfigError


def init_token(directory: Path, module: Path, label: str) -> Pkcs11Settings:
    """Create a SoftHSM2 token store under `directory` holding one new token; return its settings."""
    if shutil.which("softhsm2-util") is None:
        raise ConfigError("softhsm-missing", "softhsm2-util not found: install the softhsm2 package")
    tokens = directory / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    conf = directory / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    pin = secrets.token_hex(8)
    subprocess.run(
        [
            "softhsm2-util",
            "--init-token",
            "--free",
            "--label",
            label,
            "--pin",
            pin,
            "--so-pin",
            secrets.token_hex(8),
        ],
        check=True,
        capture_output=True,
    )
    pin_file = directory / f"{label}.pin"
    pin_file.write_text(pin)
    pin_file.chmod(0o600)
    return Pkcs11Settings(str(module), label, str(pin_file))


@contextlib.contextmanager
def temporary_token(module: Path, label: str) -> Iterator[Pkcs11Settings]:
    with tempfile.TemporaryDirectory(prefix="devid-softhsm-") as tmp:
        yield init_token(Path(tmp), module, label)
