"""The demo's HTML report: what each step did, the fleet before and after the lot revocation (with
the dashboard's expiry timeline), what publishing the revocation costs on constrained links, the
audit chain, and the comparison of the four renewal strategies when the simulator ran."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from devid.authority.core import Authority
from devid.fsutil import atomic_write
from devid.report.charts import bar_chart
from devid.revocation.report import (
    FRAME_AIRTIME_S,
    LORAWAN_DUTY_CYCLE,
    LORAWAN_PAYLOAD,
    NBIOT_BITS_PER_S,
    Row,
)
from devid.sim.compare import FIGURES
from devid.store.audit import Verification
from devid.store.engine import reading
from devid.ui import queries
from devid.ui.chart import expiry_chart
from devid.ui.html import Markup, h, join

REPORT_DIR = "report"
REPORT_FILE = "index.html"
#: Weeks the expiry timeline covers: past the one-year lifetime of the `renew` label's LDevIDs.
TIMELINE_WEEKS = 60

STYLE = Markup(
    "body{font:15px/1.5 system-ui,sans-serif;margin:0;color:#222;background:#f6f7f9}"
    "main{padding:16px 24px;max-width:1080px;margin:auto}"
    "section{background:#fff;border:1px solid #dde;border-radius:6px;padding:12px 18px;margin:0 0 18px}"
    "table{border-collapse:collapse;margin:6px 0 10px}td,th{padding:3px 10px;border-bottom:1px solid #eee;"
    "text-align:left;vertical-align:top}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}"
    "h2{font-size:18px;margin:4px 0 8px}.ok{color:#176c2f}.err{color:#b00020}.note{color:#555}"
    "ol li{margin:0 0 6px}figure{margin:8px 0}figure svg{max-width:100%;height:auto}"
    "figcaption{color:#555;font-size:13px}"
)

#: The four renewal strategies, as a reader needs them to follow the comparison.
STRATEGIES = (
    (
        "long-lived",
        "one LDevID for years, never renewed: no renewal traffic, but a stolen key stays "
        "good until revoked, so every relying party must fetch revocation data",
    ),
    (
        "renew",
        "renew at about 2/3 of the lifetime (a year here), spread by per-device jitter: little "
        "traffic, revocation still needed for the rest of the lifetime",
    ),
    (
        "short-lived",
        "days-long LDevIDs renewed often; expiry is the revocation, so they stay out of "
        "CRLs; a device offline past expiry comes back with its IDevID",
    ),
    (
        "session",
        "no LDevID: a certificate of an hour at each connection; the most EST traffic, nothing to revoke",
    ),
)


@dataclass(frozen=True)
class Step:
    title: str
    text: str


@dataclass(frozen=True)
class FleetSnapshot:
    """The dashboard's overview and expiry timeline, read from the store at one moment."""

    taken_at: datetime
    overview: queries.Overview
    weeks: tuple[dict[str, int], ...]


def snapshot(authority: Authority) -> FleetSnapshot:
    now = authority.clock.now()
    with reading(authority.engine) as conn:
        return FleetSnapshot(
            now, queries.overview(conn, now), tuple(queries.expiry_weeks(conn, now, TIMELINE_WEEKS))
        )


@dataclass(frozen=True)
class LotRevocation:
    lot: str
    reason: str
    devices: int
    certificates: int
    cas: tuple[str, ...]
    #: The size report after publishing (`devid revocation report`'s rows).
    sizes: tuple[Row, ...]


@dataclass(frozen=True)
class DemoRecord:
    home: Path
    steps: tuple[Step, ...]
    before: FleetSnapshot
    after: FleetSnapshot
    revocation: LotRevocation
    audit: Verification
    #: `simulation_section(...)` when the simulator ran.
    simulation: Markup | None = None


def write_report(record: DemoRecord) -> Path:
    """Write the report into the demo home; returns its path."""
    path = record.home / REPORT_DIR / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, render(record).encode(), durable=False)
    return path


def render(record: DemoRecord) -> Markup:
    sections = [
        _steps(record.steps),
        _fleet(record.before, record.after),
        _revocation(record.revocation),
        _audit(record.audit),
        _strategies(record.simulation),
    ]
    return h(
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>devid demo report</title>'
        '<meta name="viewport" content="width=device-width,initial-scale=1"><style>{}</style></head>'
        "<body><main><h1>devid demo report</h1><p class=note>Home {} · written {} · the live view: "
        "<code>devid serve --home {}</code> (or <code>devid demo --serve</code>), then /ui</p>{}"
        "</main></body></html>",
        STYLE,
        str(record.home),
        str(record.home),
        f"{record.after.taken_at:%Y-%m-%d %H:%M} UTC",
        join(sections),
    )


def _steps(steps: Sequence[Step]) -> Markup:
    items = join(h("<li><strong>{}</strong>: {}</li>", s.title, s.text) for s in steps)
    return h('<section id="steps"><h2>What the demo did</h2><ol>{}</ol></section>', items)


def _fleet(before: FleetSnapshot, after: FleetSnapshot) -> Markup:
    states = join(
        h("<tr><td>{}</td><td class=n>{}</td><td class=n>{}</td></tr>", state, f"{n:,}", f"{m:,}")
        for (state, n), (_, m) in zip(
            before.overview.device_states, after.overview.device_states, strict=True
        )
        if n or m
    )
    keys = sorted(set(before.overview.certificates) | set(after.overview.certificates))
    certs = join(
        h(
            "<tr><td>{}</td><td>{}</td><td class=n>{}</td><td class=n>{}</td></tr>",
            profile,
            bucket,
            f"{before.overview.certificates.get((profile, bucket), 0):,}",
            f"{after.overview.certificates.get((profile, bucket), 0):,}",
        )
        for profile, bucket in keys
    )
    return h(
        '<section id="fleet"><h2>Fleet state</h2>'
        "<p>Before and after the lot revocation. A device is ACTIVE while it is in good standing; "
        "REVOKED once its lot was. A certificate is superseded when a renewal replaced it.</p>"
        "<div style=display:flex;gap:32px;flex-wrap:wrap;align-items:flex-start>"
        "<table><caption>Devices by state</caption><tr><th>state</th><th class=n>before</th>"
        "<th class=n>after</th></tr>{}</table>"
        "<table><caption>Certificates by profile and status</caption><tr><th>profile</th><th>status</th>"
        "<th class=n>before</th><th class=n>after</th></tr>{}</table></div>"
        "<figure>{}<figcaption>Valid certificates expiring in each of the next {} weeks, by profile, "
        "before the lot revocation: the renewals the operator must expect. Renewed certificates were "
        "issued on the simulated clock, months ahead, so they expire past this window.</figcaption></figure>"
        "</section>",
        states,
        certs,
        expiry_chart(list(before.weeks), before.taken_at),
        len(before.weeks),
    )


def _revocation(revocation: LotRevocation) -> Markup:
    sizes = {row.name: row for row in revocation.sizes}
    kinds = ("full CRL", "largest shard CRL", "filter", "one OCSP response", "one compact (COSE) answer")
    per_ca: dict[str, tuple[Row | None, ...]] = {}
    for ca in revocation.cas:
        shards = [r for name, r in sizes.items() if name.startswith(f"crl {ca}/")]
        per_ca[ca] = (
            sizes.get(f"crl {ca}"),
            max(shards, key=lambda r: r.bytes, default=None),
            sizes.get(f"filter {ca}"),
            sizes.get(f"ocsp {ca}"),
            sizes.get(f"cose-status {ca}"),
        )
    bars = [
        (f"{ca}: {kind}", row.bytes, colour)
        for ca, found in per_ca.items()
        for colour, (kind, row) in enumerate(zip(kinds, found, strict=True))
        if row is not None
    ]
    rows = [row for found in per_ca.values() for row in found if row is not None]
    saved = [row for row in revocation.sizes if row.name.startswith("crl-saved ")]
    table = join(
        h(
            "<tr><td>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td>"
            "<td>{}</td></tr>",
            row.name,
            f"{row.bytes:,}",
            f"{row.nbiot_s:.2f}",
            f"{row.lorawan_frames:,}",
            f"{row.lorawan_hours:.2f}",
            row.detail,
        )
        for row in rows + saved
    )
    return h(
        '<section id="revocation"><h2>Revoking a lot</h2>'
        "<p>Lot <strong>{}</strong> was revoked ({}): {} devices and {} certificates; CRLs, filters and "
        "OCSP answers were published at once. What a device or gateway must download to learn it:</p>"
        "<figure>{}<figcaption>Size of each kind of status data, per issuing CA. A full CRL lists every "
        "revoked certificate; a shard CRL only those of its partition (the one a certificate names); the "
        "filter answers 'revoked?' for the whole CA in a few hundred bytes; an OCSP response covers one "
        "certificate, and so does a compact answer (a COSE_Sign1 over CoAP, /st).</figcaption></figure>"
        "{}<table><tr><th>item</th><th class=n>bytes</th><th class=n>NB-IoT s</th><th class=n>LoRaWAN frames"
        "</th><th class=n>LoRaWAN h</th><th>detail</th></tr>{}</table>"
        "<p class=note>Link assumptions: NB-IoT downlink {} kbit/s at the application layer; LoRaWAN EU868 "
        "SF12 (DR0): {} payload bytes per frame, {} s on air each, {}% duty cycle, so about {} frames "
        "an hour. crl-saved rows: what leaving the revoked short-lived certificates out of the CRL saved."
        "</p></section>",
        revocation.lot,
        revocation.reason,
        f"{revocation.devices:,}",
        f"{revocation.certificates:,}",
        bar_chart(bars, "bytes", "sizes of status data per issuing CA"),
        _takeaway(per_ca),
        table,
        f"{NBIOT_BITS_PER_S / 1000:g}",
        LORAWAN_PAYLOAD,
        f"{FRAME_AIRTIME_S:.2f}",
        f"{LORAWAN_DUTY_CYCLE * 100:g}",
        int(3600 * LORAWAN_DUTY_CYCLE / FRAME_AIRTIME_S),
    )


def _takeaway(per_ca: Mapping[str, tuple[Row | None, ...]]) -> Markup:
    """The figures above in one sentence, for the CA with the largest full CRL."""
    complete = [
        (full, shard, filter_, ca)
        for ca, (full, shard, filter_, *_) in per_ca.items()
        if full is not None and shard is not None and filter_ is not None
    ]
    if not complete:
        return Markup("")
    full, shard, filter_, ca = max(complete, key=lambda found: found[0].bytes)
    return h(
        "<p><strong>What it means:</strong> over LoRaWAN, one device needs {} h to receive the {} CA's full "
        "CRL ({} frames), {} h for the shard its certificate names and {} h for the filter, {} times smaller "
        "than the CRL; over NB-IoT the full CRL is {} s of airtime per device. Short-lived and session "
        "certificates never enter a CRL (the crl-saved rows): expiry revokes them.</p>",
        f"{full.lorawan_hours:.1f}",
        ca,
        f"{full.lorawan_frames:,}",
        f"{shard.lorawan_hours:.1f}",
        f"{filter_.lorawan_hours:.1f}",
        f"{full.bytes // max(filter_.bytes, 1):,}",
        f"{full.nbiot_s:.1f}",
    )


def _audit(result: Verification) -> Markup:
    verdict = (
        h(
            "<p class=ok>The chain of {} events verifies; {} checkpoints signed with the home's audit key "
            "anchor it ({} events after the last one).</p>",
            f"{result.events:,}",
            result.checkpoints,
            result.unanchored,
        )
        if result.ok
        else h(
            "<p class=err>The audit chain does not verify: {} (event {}).</p>",
            result.reason,
            result.broken_seq,
        )
    )
    return h(
        '<section id="audit"><h2>Audit</h2><p>Every issuance, renewal, registration and revocation is an '
        "event in a hash chain in the store.</p>{}</section>",
        verdict,
    )


def _strategies(simulation: Markup | None) -> Markup:
    items = join(h("<li><strong>{}</strong>: {}</li>", name, text) for name, text in STRATEGIES)
    return h(
        '<section id="strategies"><h2>The four renewal strategies</h2><ul>{}</ul>'
        "<p>The demo ran most of the fleet on <em>renew</em> and part of it on <em>short-lived</em>.</p>"
        "{}</section>",
        items,
        simulation if simulation is not None else Markup(""),
    )


def simulation_section(rows: Sequence[Mapping[str, Any]], plots: Sequence[Path]) -> Markup:
    """The simulator's comparison: a column per strategy, a line per figure (`FIGURES`, as `devid
    sim compare` prints them), and the SVG plots inlined (the XML prologue dropped; PNG twins left out)."""
    head = join(h("<th>{}</th>", row["strategy"]) for row in rows)
    body = join(
        h("<tr><td>{}</td>{}</tr>", what, join(_cell(row.get(key)) for row in rows)) for key, what in FIGURES
    )
    figures = join(
        h("<figure>{}<figcaption>{}</figcaption></figure>", _inline_svg(plot), plot.stem.replace("-", " "))
        for plot in plots
        if plot.suffix == ".svg"
    )
    first = rows[0] if rows else {}
    return h(
        '<div id="simulation"><h3>Simulated comparison</h3><p>{} devices over {} years on a {} link, '
        "the same fleet and seed under each strategy, modelled issuance (<code>devid sim compare</code>).</p>"
        "<table><tr><th></th>{}</tr>{}</table>{}</div>",
        f"{first.get('devices', 0):,}",
        first.get("years", ""),
        first.get("connectivity", ""),
        head,
        body,
        figures,
    )


def _cell(value: object) -> Markup:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return h("<td>{}</td>", "" if value is None else value)
    if isinstance(value, float):
        return h("<td class=n>{}</td>", f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}")
    return h("<td class=n>{}</td>", f"{value:,}")


def _inline_svg(plot: Path) -> Markup:
    """The simulator's own SVG output (trusted, written by this process), from its `<svg` on."""
    text = plot.read_text(encoding="utf-8")
    return Markup(text[text.index("<svg") :])
