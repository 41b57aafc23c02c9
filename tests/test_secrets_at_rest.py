"""Credentials at rest: what lies in the home and the store is useless to someone who can only read
or write them (issue 8, hardening)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from e2e import devid, flat

from devid.authority.setup import init_home, open_authority
from devid.config import MIN_PASSPHRASE_LENGTH
from devid.errors import PolicyError
from devid.keys.software import decrypt_private_key, encrypt_private_key

PASSPHRASE = b"correct horse battery staple"


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o000, 0o022])
def test_home_is_0700_and_database_0600_whatever_the_umask(tmp_path: Path, mask: int) -> None:
    with umask(mask):
        home = init_home(tmp_path / "home", org="Test Org", passphrase=PASSPHRASE)
        authority = open_authority(home, PASSPHRASE)
        try:
            with authority.engine.begin() as conn:  # a write, so SQLite's -wal and -shm exist
                conn.exec_driver_sql("CREATE TABLE umask_probe (x INTEGER)")
            assert mode(home.path) == 0o700
            db_files = [p for p in home.path.iterdir() if p.name.startswith("devid.db")]
            assert {p.name for p in db_files} >= {"devid.db", "devid.db-wal"}
            assert {p.name: mode(p) for p in db_files} == {p.name: 0o600 for p in db_files}
        finally:
            authority.engine.dispose()


def test_a_new_passphrase_has_a_minimum_length(tmp_path: Path) -> None:
    short = b"x" * (MIN_PASSPHRASE_LENGTH - 1)
    with pytest.raises(PolicyError) as refused:
        init_home(tmp_path / "home", org="Test Org", passphrase=short)
    assert refused.value.code == "passphrase-too-short"
    assert f"at least {MIN_PASSPHRASE_LENGTH} characters" in refused.value.message
    assert not (tmp_path / "home").exists()

    result = devid("init", "--home", tmp_path / "cli", "--org", "Test Org", passphrase="short")
    assert result.returncode != 0
    assert "[passphrase-too-short]" in flat(result.stderr) and "12 characters" in flat(result.stderr)
    assert not (tmp_path / "cli" / "devid.toml").exists()


def test_an_existing_home_with_a_shorter_passphrase_still_opens(tmp_path: Path) -> None:
    """The minimum applies when a passphrase is set, not when an existing home is opened."""
    home = init_home(tmp_path / "home", org="Test Org", passphrase=PASSPHRASE)
    # A home made before the minimum: its keys under an 8-character passphrase.
    for pem in home.keys_dir.glob("*.key.pem"):
        key = decrypt_private_key(pem.read_bytes(), PASSPHRASE, pem.name)
        pem.write_bytes(encrypt_private_key(key, b"old-pass"))
    authority = open_authority(home, b"old-pass")
    try:
        assert authority.cas["root"].key.public_key() == authority.root.public_key()
    finally:
        authority.engine.dispose()
