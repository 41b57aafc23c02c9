"""`devid bench ui`: every dashboard page's latency on a store of N devices and N certificates.

The store is filled by INSERT .. SELECT over a generated sequence (its counters rebuilt after),
spread over profiles, statuses, expiry days, device states, hubs, enrollment groups and
manufacturers, with some revocations and published status data. Then the real
application (`make_app`) is served, an API token logs in, and every GET route under /ui (read
from the router, so new pages are measured too) is timed. The baseline is the scan the overview
made before counters: one grouped pass over the certificates and a count per device state.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer
from sqlalchemy import Connection, case, func, select, text

from devid.api import tokens
from devid.authority.core import Authority
from devid.authority.setup import init_home, open_authority
from devid.bench import Figure
from devid.pki.profiles import ProfileName
from devid.server.app import make_app
from devid.store import counters
from devid.store.engine import reading, writing
from devid.store.models import cas, certificates, devices
from devid.store.states import CertificateStatus, DeviceState
from devid.ui import queries
from devid.ui.app import PREFIX
from devid.ui.queries import EXPIRING_WITHIN, Bucket
from devid.ui.session import COOKIE, LOGIN_COOKIE

_PASSPHRASE = b"devid-bench-ui"
#: Requests per page; the first is a warm-up and not counted.
REQUESTS = 7
#: The dashboard's latency goal per page.
GOAL_MS = 300.0
HUBS, GROUPS, MANUFACTURERS = 8, 6, 3
DEVICE_PREFIX = "BENCH-"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


#: Devices by state, certificates by (profile, bucket).
Counts = tuple[list[tuple[str, int]], dict[tuple[str, str], int]]


def scan_overview(conn: Connection, now: datetime) -> Counts:
    """The overview's counts as read before the counters (the baseline, and the tests' truth):
    a count per device state and one grouped pass over every certificate, to the UTC day."""
    states = [
        (state.value, conn.execute(select(func.count()).where(devices.c.state == state.value)).scalar_one())
        for state in DeviceState
    ]
    c = certificates.c
    today = datetime.combine(now.date(), datetime.min.time(), now.tzinfo)
    bucket = case(
        (c.status == CertificateStatus.REVOKED.value, Bucket.REVOKED),
        (c.status == CertificateStatus.SUPERSEDED.value, Bucket.SUPERSEDED),
        (c.not_after < today, Bucket.EXPIRED),
        (c.not_after < today + timedelta(days=EXPIRING_WITHIN.days + 1), Bucket.EXPIRING),
        else_=Bucket.VALID,
    ).label("bucket")
    counts = {
        (row.profile, row.bucket): row.n
        for row in conn.execute(
            select(c.profile, bucket, func.count().label("n")).group_by(c.profile, bucket)
        )
    }
    return states, counts


@contextmanager
def _home() -> Iterator[Authority]:
    """A throw-away SQLite home, in /dev/shm when it exists (the fill is I/O, not what is timed)."""
    shm = Path("/dev/shm")
    base = str(shm) if shm.is_dir() and shutil.disk_usage(shm).free > 4 << 30 else None
    with tempfile.TemporaryDirectory(prefix="devid-bench-ui-", dir=base) as tmp:
        home = init_home(Path(tmp) / "home", org="Bench", passphrase=_PASSPHRASE)
        authority = open_authority(home, _PASSPHRASE)
        try:
            yield authority
        finally:
            authority.close()


def fill(authority: Authority, n: int) -> None:
    """N devices and one certificate each, by set-based SQL on SQLite; the counting triggers are
    set aside for the load and the counters rebuilt after it, as the migration fills them."""
    now = authority.clock.now()
    stamp = now.strftime("%Y-%m-%d %H:%M:%S")
    profiles = [ProfileName.IDEVID, ProfileName.LDEVID, ProfileName.LDEVID, ProfileName.SERVER]
    with writing(authority.engine) as conn:
        counters.uninstall(conn)
        issuer = conn.execute(select(cas.c.id).where(cas.c.name == "operational")).scalar_one()
        # A real CA certificate stands in for the manufacturers' (`devid health` parses them).
        der = conn.execute(select(cas.c.der).where(cas.c.name == "manufacturing")).scalar_one()
        for i in range(HUBS):
            conn.execute(
                text(
                    "INSERT INTO hubs (name, url, region, weight, latencies, enabled, created_at, updated_at,"
                    " version) VALUES (:name, :url, 'eu', 1, '{}', 1, :now, :now, 1)"
                ),
                {"name": f"hub-{i}", "url": f"mqtts://hub-{i}.example", "now": stamp},
            )
        for i in range(GROUPS):
            conn.execute(
                text(
                    "INSERT INTO enrollments (kind, name, allocation, hubs, reprovision, properties, enabled,"
                    " created_at, updated_at, version) VALUES ('group', :name, 'hashed', '[]',"
                    " 'migrate', '{}', 1, :now, :now, 1)"
                ),
                {"name": f"group-{i}", "now": stamp},
            )
        for i in range(MANUFACTURERS):
            conn.execute(
                text(
                    "INSERT INTO manufacturers (name, state, auto_register, auto_activate, subject,"
                    " fingerprint, der, not_after, created_at, updated_at, version) VALUES (:name,"
                    " 'ACTIVE', 1, 1, :name, :fp, :der, :now, :now, :now, 1)"
                ),
                {"name": f"maker-{i}", "fp": f"{i:064x}", "der": der, "now": stamp},
            )
        states = [s.value for s in DeviceState]
        conn.execute(
            text(
                f"WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i < :n - 1) "
                f"INSERT INTO devices (serial, model, lot, line, state, created_at, updated_at,"
                f" manufacturer_id, enrollment_id, hub_id, version) "
                f"SELECT printf('{DEVICE_PREFIX}%08d', i), 'model-' || (i % 5), 'LOT-' || (i / 10000),"
                f" 'line-1', CASE WHEN i % 50 = 1 THEN :s1 WHEN i % 50 = 2 THEN :s2 WHEN i % 97 = 3 THEN :s3"
                f" WHEN i % 101 = 4 THEN :s4 WHEN i % 103 = 5 THEN :s5 ELSE :s0 END, :now, :now,"
                f" CASE WHEN i % 4 = 0 THEN NULL ELSE 1 + i % {MANUFACTURERS} END,"
                f" 1 + i % {GROUPS}, 1 + i % {HUBS}, 1 FROM seq"
            ),
            {"n": n, "now": stamp, **{f"s{i}": s for i, s in enumerate(states)}},
        )
        # One certificate per device: lifetimes from 200 days ago to 600 days ahead, a 50th
        # superseded, a 97th revoked.
        conn.execute(
            text(
                "INSERT INTO certificates (serial, issuer_id, device_id, profile, subject, not_before,"
                " not_after, fingerprint, public_key_fingerprint, status, status_at, der, created_at, idx,"
                " shard, revoked_at, reason) "
                "SELECT printf('%040x', id), :issuer, id,"
                " CASE id % 4 WHEN 0 THEN :p0 WHEN 1 THEN :p1 WHEN 2 THEN :p2 ELSE :p3 END,"
                " 'CN=' || serial, :now, datetime(:now, printf('%+d days', (id * 7919) % 800 - 200)),"
                " printf('%064x', id), printf('%064x', id), CASE WHEN id % 50 = 0 THEN :superseded"
                " WHEN id % 97 = 0 THEN :revoked ELSE :valid END, :now, x'3000', :now, id, id % 16,"
                " CASE WHEN id % 97 = 0 THEN :now END, CASE WHEN id % 97 = 0 THEN 1 END FROM devices"
            ),
            {
                "issuer": issuer,
                "now": stamp,
                **{f"p{i}": p.value for i, p in enumerate(profiles)},
                **{s.name.lower(): s.value for s in CertificateStatus},
            },
        )
        # The revocations page asks the OCSP responder about the issuer's latest certificate: a
        # parseable one there (the stand-in CA certificate), so the timed page asks it (its answer,
        # unauthorized: not the operational CA's, is left off the page).
        conn.execute(
            text("UPDATE certificates SET der = :der WHERE id = (SELECT max(id) FROM certificates)"),
            {"der": der},
        )
        for i in range(20):
            conn.execute(
                text(
                    "INSERT INTO revocations (at, actor, selector, value, reason, note, certificates,"
                    " devices) VALUES (:now, 'bench', 'lot', :lot, 1, '', 100, 100)"
                ),
                {"now": stamp, "lot": f"LOT-{i}"},
            )
            conn.execute(
                text(
                    "INSERT INTO published (kind, scope, number, generation, this_update, next_update, data)"
                    " VALUES ('crl', :scope, :number, :number, :now, :now, zeroblob(4096))"
                ),
                {"scope": f"issuing/{i % 16}", "number": i, "now": stamp},
            )
        counters.rebuild(conn)
        counters.install(conn)


async def _login(client: aiohttp.ClientSession, token: str) -> str:
    """The session cookie's `name=value` (sent by hand: the server's cookies are Secure)."""
    async with client.get(f"{PREFIX}/login") as answer:
        csrf = _CSRF.search(await answer.text())
        nonce = answer.cookies[LOGIN_COOKIE].value
    assert csrf is not None
    async with client.post(
        f"{PREFIX}/login",
        data={"token": token, "csrf": csrf.group(1)},
        headers={"Cookie": f"{LOGIN_COOKIE}={nonce}"},
        allow_redirects=False,
    ) as answer:
        return f"{COOKIE}={answer.cookies[COOKIE].value}"


def _pages(routes: list[str], sample_serial: str) -> dict[str, str]:
    """Every GET route under /ui but the login form -> a path to it, placeholders filled with
    existing rows (a device serial, else id 1)."""
    paths = {}
    for route in routes:
        path = re.sub(r"\{serial\}", sample_serial, re.sub(r"\{(?!serial\})[^}]+\}", "1", route))
        paths[route] = path + f"?q={sample_serial[:-2]}" if route == f"{PREFIX}/devices" else path
    return paths


async def _measure(authority: Authority, requests: int) -> tuple[dict[str, list[float]], dict[str, int]]:
    token, _ = tokens.create(authority, "bench-ui", "admin", authority.clock.now())
    app = make_app(authority)
    routes = sorted(
        {
            route.resource.canonical
            for route in app.router.routes()
            if route.method == "GET"
            and route.resource is not None
            and route.resource.canonical.startswith(PREFIX)
            and route.resource.canonical != f"{PREFIX}/login"
        }
    )
    timings: dict[str, list[float]] = {}
    #: A page whose placeholder names no row answers 404: still timed, and said.
    statuses: dict[str, int] = {}
    async with TestServer(app) as server, aiohttp.ClientSession(base_url=str(server.make_url(""))) as client:
        cookie = await _login(client, token)
        for route, path in _pages(routes, f"{DEVICE_PREFIX}{12345 % max(1, _count(authority)):08d}").items():
            for i in range(requests + 1):
                start = time.perf_counter()
                async with client.get(path, headers={"Cookie": cookie}, allow_redirects=False) as answer:
                    await answer.read()
                    statuses[route] = answer.status
                if i:
                    timings.setdefault(route, []).append((time.perf_counter() - start) * 1000)
    return timings, statuses


def _count(authority: Authority) -> int:
    with reading(authority.engine) as conn:
        return int(conn.execute(select(func.max(devices.c.id))).scalar_one() or 0)


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def run(n: int, requests: int = REQUESTS) -> list[Figure]:
    with _home() as authority:
        start = time.perf_counter()
        fill(authority, n)
        filled = time.perf_counter() - start
        now = authority.clock.now()
        counted = _median_ms(lambda conn: queries.overview(conn, now), authority)
        scanned = _median_ms(lambda conn: scan_overview(conn, now), authority)
        timings, statuses = asyncio.run(_measure(authority, requests))
    figures = [
        Figure("ui.fill_s", filled, "s", note=f"{n:,} devices and {n:,} certificates"),
        Figure(
            "ui.overview_counts_ms",
            counted,
            "ms",
            scanned,
            "the scan the overview made before counters (same counts)",
            "devices by state, hub, group, manufacturer; certificates by profile and status",
        ),
    ]
    for route, values in timings.items():
        status = "" if statuses[route] == 200 else f" (answered {statuses[route]})"
        note = f"GET {route}{status}, {len(values)} requests; goal ≤ {GOAL_MS:.0f} ms"
        figures.append(Figure(f"ui.median_ms {route}", statistics.median(values), "ms", note=note))
        figures.append(Figure(f"ui.p95_ms {route}", _p95(values), "ms"))
    return figures


def _median_ms(read: Callable[[Connection], object], authority: Authority, times: int = 3) -> float:
    spent = []
    for _ in range(times):
        start = time.perf_counter()
        with reading(authority.engine) as conn:
            read(conn)
        spent.append((time.perf_counter() - start) * 1000)
    return statistics.median(spent)
