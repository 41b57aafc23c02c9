"""Gateways: the sessions an edge gateway carried, reported so `devid health` can tell whether a
revoked certificate is still connected somewhere (`devid.authority.sightings`)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from devid.api.routes import TIME, Call, Param, Route, obj
from devid.authority import sightings
from devid.authority.roles import Permission
from devid.errors import PolicyError

GATEWAY_NAME: dict[str, Any] = {"type": "string", "pattern": f"^{sightings.GATEWAY_NAME.pattern}$"}
SESSION = obj(
    {
        "fingerprint": {
            "type": "string",
            "pattern": "^[0-9a-f]{64}$",
            "description": "SHA-256 of the certificate the session presented (DER), hex",
        },
        "first_seen": TIME,
        "last_seen": TIME,
    }
)
REPORT = obj({"sessions": {"type": "array", "items": SESSION, "maxItems": sightings.MAX_REPORT}})
RECORDED = obj(
    {
        "recorded": {"type": "integer", "description": "sightings of certificates this store issued"},
        "unknown": {"type": "integer", "description": "fingerprints of certificates it does not know"},
        "revoked": {"type": "integer", "description": "of those recorded, seen connected past revocation"},
    }
)


#: RFC 3339 date-time, as the schema's format check admitted it (`t`/`z` in either case).
_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\d)[Tt](\d\d:\d\d):(\d\d)(\.\d+)?([Zz]|[+-]\d\d:\d\d)")


def parse_time(text: str) -> datetime:
    """An RFC 3339 time as aware UTC. Python's parser takes less than RFC 3339 allows, and a
    well-formed report must not be refused for it: a leap second is read as :59, digits past the
    microsecond are dropped, and a time beyond Python's range once in UTC is its nearest end."""
    found = _RFC3339.fullmatch(text)
    if found is None:  # the schema's format check let it through: not RFC 3339 after all
        raise PolicyError("request-invalid", f"time {text!r} is not an RFC 3339 date-time")
    day, minutes, seconds, fraction, zone = found.groups()
    zone = "+00:00" if zone in "Zz" else zone
    moment = datetime.fromisoformat(
        f"{day}T{minutes}:{min(int(seconds), 59):02d}{(fraction or '')[:7]}{zone}"
    )
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        return (datetime.min if moment.year == 1 else datetime.max).replace(tzinfo=UTC)


def report_sightings(call: Call) -> dict[str, Any]:
    """Keep the certificates a gateway saw connected since its last report (a first sighting
    later than the last is read as the last)."""
    seen = [
        sightings.Sighting(item["fingerprint"], parse_time(item["first_seen"]), parse_time(item["last_seen"]))
        for item in call.body["sessions"]
    ]
    done = sightings.record(call.authority, call.path["name"], seen)
    return {"recorded": done.recorded, "unknown": done.unknown, "revoked": done.revoked}


ROUTES = [
    Route(
        "POST",
        "/gateways/{name}/sightings",
        Permission.SIGHTINGS_WRITE,
        "Report the certificates a gateway's sessions presented",
        report_sightings,
        RECORDED,
        path_params=[Param("name", GATEWAY_NAME, "the gateway's name")],
        body=REPORT,
    ),
]
