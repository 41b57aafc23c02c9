"""What an authority owns (its group committer, token keyring and policy, registry hint) is its own,
and `close()` ends it: the committer commits what it was given, then its thread stops."""

from __future__ import annotations

import threading

import pytest
from conftest import PASSPHRASE
from cryptography.hazmat.primitives.asymmetric import ec

from devid.authority.group_commit import committer
from devid.authority.requests import IssueRequest, NewDevice
from devid.authority.setup import open_authority
from devid.authority.token_keys import token_keyring, token_policy
from devid.config import Home
from devid.errors import ConfigError
from devid.pki.profiles import ProfileName
from devid.registry import generation
from devid.store import repo
from devid.store.engine import reading


def _request(serial: str) -> IssueRequest:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return IssueRequest(ProfileName.IDEVID, key, new_device=NewDevice(serial))


def _committer_threads() -> int:
    return sum(t.name == "devid-group-commit" for t in threading.enumerate())


def test_close_commits_what_was_submitted_then_stops_the_committer(sqlite_home: Home) -> None:
    running = _committer_threads()
    with open_authority(sqlite_home, PASSPHRASE) as authority:
        group = committer(authority)
        assert committer(authority) is group
        futures = [group.submit(_request(f"SN-{i}"), "test") for i in range(40)]
        assert _committer_threads() == running + 1
    # Leaving the block closed it: every request committed, the thread gone, the engine disposed.
    assert all(f.done() and f.exception() is None for f in futures)
    assert _committer_threads() == running
    with pytest.raises(ConfigError) as closed:
        group.submit(_request("SN-late"), "test")
    assert closed.value.code == "authority-closed"
    with pytest.raises(ConfigError):
        committer(authority)

    with open_authority(sqlite_home, PASSPHRASE) as again, reading(again.engine) as conn:
        assert len(repo.device_ids(conn, [f"SN-{i}" for i in range(40)])) == 40


def test_two_authorities_share_nothing_they_own(sqlite_home: Home) -> None:
    with open_authority(sqlite_home, PASSPHRASE) as one, open_authority(sqlite_home, PASSPHRASE) as two:
        assert committer(one) is not committer(two)
        assert token_keyring(one) is not token_keyring(two)
        assert token_policy(one) is not token_policy(two)
        before = generation.local_changes(two)
        generation.committed(one)
        assert generation.local_changes(two) == before
        # ...but the store they share is one: both sign tokens with the same key.
        assert token_keyring(one).current().kid == token_keyring(two).current().kid
