"""Audit checkpoints: the chain is anchored by signatures of the audit key, which lives with the CA
keys, so a chain rewritten whole from the database (every hash recomputed) no longer verifies."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import PASSPHRASE
from e2e import devid, flat, ok
from sqlalchemy import Connection, select, update

from devid.authority.core import Authority
from devid.authority.setup import open_authority
from devid.config import Home
from devid.store import audit
from devid.store.models import audit_checkpoints, audit_events, audit_head


def _events(n: int, action: str = "test.event") -> list[audit.Event]:
    return [audit.Event(action, f"subject-{i}", "test", "ok", {"i": i}) for i in range(n)]


def _append(auth: Authority, n: int, action: str = "test.event") -> None:
    with auth.engine.begin() as conn:
        audit.append(conn, _events(n, action), auth.clock.now())


def _rewrite_whole_chain(conn: Connection, seq: int, detail: str) -> None:
    """What someone with write access to the database alone can do: edit an event and recompute
    every later hash and the head, so the chain is consistent again."""
    rows = list(conn.execute(select(audit_events).order_by(audit_events.c.seq)))
    prev = audit.GENESIS
    for row in rows:
        text = detail if row.seq == seq else row.detail
        digest = audit._digest(prev, row.seq, row.at, row.actor, row.action, row.outcome, row.subject, text)
        conn.execute(
            update(audit_events)
            .where(audit_events.c.seq == row.seq)
            .values(detail=text, prev_hash=prev, hash=digest)
        )
        prev = digest
    conn.execute(update(audit_head).where(audit_head.c.id == 1).values(hash=prev))


def test_a_normal_run_verifies_and_counts_what_follows_the_last_checkpoint(authority: Authority) -> None:
    first = authority.checkpoint_audit()
    assert first is not None and first.seq == 5  # init's five CA events
    assert authority.checkpoint_audit() is None  # nothing new: nothing signed
    _append(authority, 3)
    result = authority.verify_audit()
    assert result.ok and result.events == 8
    assert (result.checkpoints, result.anchored_seq, result.unanchored) == (1, 5, 3)
    second = authority.checkpoint_audit()
    assert second is not None and second.seq == 8
    result = authority.verify_audit()
    assert result.ok and (result.checkpoints, result.anchored_seq, result.unanchored) == (2, 8, 0)


def test_a_chain_rewritten_whole_fails_at_its_checkpoint(authority: Authority) -> None:
    _append(authority, 4)
    authority.checkpoint_audit()
    _append(authority, 2)
    forged = json.dumps({"role": "root", "forged": True})
    with authority.engine.begin() as conn:
        _rewrite_whole_chain(conn, 3, forged)
        assert audit.verify(conn).ok  # the chain alone cannot tell: every link is consistent
    result = authority.verify_audit()
    assert not result.ok
    assert result.broken_seq == 9 and "checkpoint 1 signed (the chain was rewritten)" in result.reason


def test_a_checkpoint_rewritten_with_the_chain_fails_its_signature(authority: Authority) -> None:
    authority.checkpoint_audit()
    with authority.engine.begin() as conn:
        _rewrite_whole_chain(conn, 2, "{}")
        new_hash = conn.execute(select(audit_events.c.hash).where(audit_events.c.seq == 5)).scalar_one()
        conn.execute(update(audit_checkpoints).values(hash=new_hash))
    result = authority.verify_audit()
    assert not result.ok and "is not signed by the audit key" in result.reason


def test_a_checkpoint_past_the_end_means_events_were_removed(authority: Authority) -> None:
    _append(authority, 2)
    authority.checkpoint_audit()
    with authority.engine.begin() as conn:  # drop the last two events and move the head back
        conn.execute(audit_events.delete().where(audit_events.c.seq > 5))
        head = conn.execute(select(audit_events.c.hash).where(audit_events.c.seq == 5)).scalar_one()
        conn.execute(update(audit_head).values(seq=5, hash=head))
    result = authority.verify_audit()
    assert not result.ok and "a checkpoint names event 7: events were removed" in result.reason


def test_an_existing_home_gets_its_audit_key_on_first_use(sqlite_home: Home) -> None:
    """Homes made before checkpoints have no audit key: the first checkpoint makes it."""
    label = f"{sqlite_home.config.key_prefix}audit"
    key_file = sqlite_home.keys_dir / f"{label}.key.pem"
    key_file.unlink()
    auth = open_authority(sqlite_home, PASSPHRASE)
    try:
        made = auth.checkpoint_audit()
        assert made is not None and made.key_label == label and key_file.is_file()
        reopened = open_authority(sqlite_home, PASSPHRASE)
        assert reopened.verify_audit().ok
        reopened.engine.dispose()
    finally:
        auth.engine.dispose()


def test_cli_anchors_what_it_wrote_and_lists_events(tmp_path: Path) -> None:
    home = tmp_path / "H"
    ok(devid("init", "--home", home, "--org", "Acme"))
    unknown = devid("device", "enroll-secret", "SN-A", "--home", home)
    assert unknown.returncode == 2 and "record it first with `devid device add SN-A`" in flat(unknown.stderr)
    ok(devid("device", "add", "SN-A", "--model", "m1", "--home", home))
    secret = ok(devid("device", "enroll-secret", "SN-A", "--home", home)).stdout.splitlines()[-1]
    assert len(secret) >= 32
    verified = flat(ok(devid("audit", "verify", "--home", home)).stdout)
    # init, device add and enroll-secret each anchored what they wrote when they ended
    assert "audit chain intact: 7 events verified; 3 signed checkpoints valid" in verified, verified
    assert "last anchored event 7, 0 events after it" in verified, verified
    listed = ok(
        devid("audit", "list", "--action", "device.create", "--since", "2000-01-01", "--json", "--home", home)
    )
    [event] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert event["seq"] == 6 and event["subject"] == "SN-A" and isinstance(event["detail"], dict)
    assert ok(devid("audit", "list", "--since", "2999-01-01", "--json", "--home", home)).stdout == ""
    bad = devid("audit", "list", "--since", "yesterday", "--home", home)
    assert bad.returncode == 2 and "[since]" in bad.stderr
