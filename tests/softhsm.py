"""Real SoftHSM2 tokens for tests.

SoftHSM reads SOFTHSM2_CONF and lists the tokens once, when the library is first initialised in a
process, and python-pkcs11 loads a library once per process. So a test session uses ONE conf and
token folder and creates every token it needs up front (a session-scoped fixture), before anything
opens the library: a token initialised later by softhsm2-util stays invisible to this process.
Missing SoftHSM is a failure, not a skip: these tests are the only proof the token path works.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
)
INSTALL_HINT = "install softhsm2 (Debian/Ubuntu: apt-get install softhsm2; macOS: brew install softhsm)"


@dataclass(frozen=True)
class SoftToken:
    """An initialised SoftHSM token and what a test needs to reach it."""

    module: str
    label: str
    pin: str
    so_pin: str
    pin_file: Path
    conf: Path


def softhsm_module() -> str:
    """The SoftHSM2 PKCS#11 module ($DEVID_TEST_SOFTHSM_MODULE overrides the search)."""
    override = os.environ.get("DEVID_TEST_SOFTHSM_MODULE")
    candidates = (override,) if override else MODULE_CANDIDATES
    for path in candidates:
        if path and os.path.isfile(path):
            return path
    pytest.fail(f"SoftHSM2 PKCS#11 module not found (looked at {', '.join(candidates)}): {INSTALL_HINT}")


def _softhsm_loaded() -> bool:
    """Whether libsofthsm2 is already mapped into this process (its conf is then fixed)."""
    try:
        return "libsofthsm2" in Path("/proc/self/maps").read_text()
    except OSError:
        return False


def make_token(
    tmp_dir: Path, label: str = "devid-test", pin: str = "1234", so_pin: str = "5678"
) -> SoftToken:
    """Initialise a token labelled `label` in `<tmp_dir>/tokens`, pointing SOFTHSM2_CONF there.

    Call it repeatedly with the same `tmp_dir` (and different labels), all before the library is
    first loaded in this process.
    """
    util = shutil.which("softhsm2-util")
    if util is None:
        pytest.fail(f"softhsm2-util is not on PATH: {INSTALL_HINT}")
    module = softhsm_module()
    tmp_dir = tmp_dir.resolve()
    conf = tmp_dir / "softhsm2.conf"
    if _softhsm_loaded():
        pytest.fail(
            f"SoftHSM is already loaded in this process (SOFTHSM2_CONF={os.environ.get('SOFTHSM2_CONF')}): "
            f"it would never see token {label!r}. Create every token in one session-scoped fixture "
            "before the first test opens the library."
        )
    tokens = tmp_dir / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    result = subprocess.run(
        [util, "--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", so_pin],
        capture_output=True,
        text=True,
        env={**os.environ, "SOFTHSM2_CONF": str(conf)},
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"softhsm2-util --init-token failed for {label!r}: {result.stdout}{result.stderr}")
    pin_file = tmp_dir / f"{label}.pin"
    pin_file.write_text(pin)
    pin_file.chmod(0o600)
    return SoftToken(module=module, label=label, pin=pin, so_pin=so_pin, pin_file=pin_file, conf=conf)
