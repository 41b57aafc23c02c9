"""`devid agent enroll --transport coaps`: a device from the factory line enrolls over EST-coaps,
then renews over it when its policy says so, with the same decisions as over HTTPS."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from coaps_helpers import Coaps, running_coaps
from e2e import devid, flat, ok
from test_agent import make_device, station, store_status

from devid.authority.core import Authority
from devid.coap.client import CoapsError
from devid.coap.message import Code
from devid.device.agent import LDEVID_FILE, STATE_FILE
from devid.device.coaps import est_error, http_status
from devid.factory.station import Station
from devid.pki.encoding import load_certificates

__all__ = ["station"]  # the fixture, used by name


@pytest.fixture
def coaps(auth: Authority, tmp_path: Path) -> Iterator[Coaps]:
    with running_coaps(auth, tmp_path / "coaps") as srv:
        yield srv


def test_agent_enrolls_and_renews_over_coaps(coaps: Coaps, auth: Authority, station: Station) -> None:
    directory = make_device(station, "SN-AGENT-COAPS")
    device = ("--device", directory)
    url = f"coaps://127.0.0.1:{coaps.port}"
    wrong = devid("agent", "enroll", *device, "--transport", "coaps", "--server", "https://127.0.0.1:1")
    assert wrong.returncode == 2 and "[agent-transport]" in flat(wrong.stderr)

    out = flat(
        ok(
            devid(
                "agent",
                "enroll",
                *device,
                "--transport",
                "coaps",
                "--server",
                url,
                "--ca-bundle",
                coaps.root_pem,
                "--label",
                "short",
                passphrase=None,
            )
        ).stdout
    )
    assert "enrolled SN-AGENT-COAPS: short-lived certificate serial" in out, out
    first = load_certificates((directory / LDEVID_FILE).read_bytes())
    assert len(first) == 2  # the LDevID and the operational CA above it (from /est/crts)
    assert store_status(auth, first[0]) == ("valid", "ldevid")

    # Renewal falls due: the next check-in renews over EST-coaps with the LDevID.
    state = json.loads((directory / STATE_FILE).read_text())
    assert state["server"] == url and state["renew_at"]
    state["renew_at"] = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    (directory / STATE_FILE).write_text(json.dumps(state))
    run = flat(ok(devid("agent", "run", *device, "--once", passphrase=None)).stdout)
    assert "SN-AGENT-COAPS: renew" in run, run
    renewed = load_certificates((directory / LDEVID_FILE).read_bytes())[0]
    assert renewed != first[0] and store_status(auth, first[0])[0] == "superseded"


def test_coap_refusals_reach_the_agent_as_the_http_statuses_est_would_send() -> None:
    refused = est_error(CoapsError(Code.FORBIDDEN, "device 'X' is INACTIVE [device-not-active]"))
    assert (refused.status, refused.code) == (403, "device-not-active")
    busy = est_error(CoapsError(Code.SERVICE_UNAVAILABLE, "the store is unavailable [store-unavailable]", 2))
    assert (busy.status, busy.retry_after) == (503, 2)
    pending = est_error(
        CoapsError(Code.SERVICE_UNAVAILABLE, "enrollment awaits approval [approval-pending]", 60)
    )
    assert (pending.status, pending.retry_after) == (202, 60)
    assert est_error(CoapsError(0, "no answer")).status == 0
    assert http_status(Code.REQUEST_ENTITY_TOO_LARGE) == 413 and http_status(Code.TOO_MANY_REQUESTS) == 429
