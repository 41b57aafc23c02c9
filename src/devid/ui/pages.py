"""The dashboard's pages as HTML (every value escaped by `devid.ui.html.h`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import quote

from devid.authority.health import Finding, Severity
from devid.pki.reasons import Reason
from devid.store.counters import Dimension
from devid.ui.html import Markup, h, join
from devid.ui.queries import Bucket, DevicePage, Overview
from devid.ui.session import Session

STYLE = Markup(
    "body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#222;background:#f6f7f9}"
    "header{background:#1f2d3d;color:#fff;padding:8px 20px;display:flex;gap:20px;align-items:center}"
    "header a{color:#fff}header form{margin-left:auto}main{padding:16px 20px;max-width:1100px}"
    "section{background:#fff;border:1px solid #dde;border-radius:6px;padding:12px 16px;margin:0 0 16px}"
    "table{border-collapse:collapse}td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:left}"
    "td.n{text-align:right;font-variant-numeric:tabular-nums}.err{color:#b00020}.ok{color:#176c2f}"
    "h2{font-size:16px;margin:4px 0 8px}.grid{display:flex;gap:16px;flex-wrap:wrap}"
    "button.danger{background:#b6443b;color:#fff;border:0;padding:6px 14px;border-radius:4px}"
)


def _doc(title: str, header: Markup, body: Markup) -> Markup:
    return h(
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{} · devid</title>'
        '<meta name="viewport" content="width=device-width,initial-scale=1"><style>{}</style></head>'
        "<body>{}<main><h1>{}</h1>{}</main></body></html>",
        title,
        STYLE,
        header,
        title,
        body,
    )


def csrf_field(session: Session) -> Markup:
    return h('<input type="hidden" name="csrf" value="{}">', session.csrf)


def page(session: Session, title: str, body: Markup) -> Markup:
    header = h(
        '<header><strong>devid</strong><a href="/ui">Overview</a><a href="/ui/health">Health</a>'
        '<form action="/ui/devices" method="get"><input name="q" placeholder="serial prefix" '
        'aria-label="device serial prefix"> <button>Search</button></form>'
        '<span>{} ({})</span><form action="/ui/logout" method="post" style="margin:0">{}'
        "<button>Log out</button></form></header>",
        session.token_name,
        session.role.value,
        csrf_field(session),
    )
    return _doc(title, header, body)


def login(error: str | None, csrf: str) -> Markup:
    message = h('<p class="err" role="alert">{}</p>', error) if error else Markup("")
    body = h(
        '<section><form action="/ui/login" method="post">{}<input type="hidden" name="csrf" value="{}">'
        "<label>API token<br>"
        '<input type="password" name="token" size="60" autocomplete="off" required autofocus></label>'
        "<p><button>Log in</button></p></form><p>Make one with <code>devid api-token create NAME "
        "--role operator</code>.</p></section>",
        message,
        csrf,
    )
    return _doc("Log in", Markup("<header><strong>devid</strong></header>"), body)


def _table(head: Iterable[str], rows: Iterable[Iterable[object]], numeric_from: int = 1) -> Markup:
    cells = join(h("<th>{}</th>", c) for c in head)
    lines = join(
        h(
            "<tr>{}</tr>",
            join(
                h('<td class="n">{}</td>' if i >= numeric_from else "<td>{}</td>", v)
                for i, v in enumerate(row)
            ),
        )
        for row in rows
    )
    return h("<table><thead><tr>{}</tr></thead><tbody>{}</tbody></table>", cells, lines)


def _device_link(serial: str) -> Markup:
    return h('<a href="/ui/devices/{}">{}</a>', quote(serial, safe=""), serial)


def _device_groups(summary: Overview, dimension: Dimension) -> Markup:
    """One row per hub, group or manufacturer: its devices in total and in each state that has any."""
    groups = summary.device_groups[dimension]
    states = [s for s, _ in summary.device_states if any(s in counts for _, counts in groups)]
    return h(
        "<section><h2>Devices by {}</h2>{}</section>",
        DIMENSION_TITLES[dimension],
        _table(
            (dimension.value, "devices", *states),
            (
                (name, f"{sum(counts.values()):,}", *(f"{counts.get(s, 0):,}" for s in states))
                for name, counts in groups
            ),
        ),
    )


DIMENSION_TITLES = {
    Dimension.HUB: "hub",
    Dimension.ENROLLMENT: "enrollment group",
    Dimension.MANUFACTURER: "manufacturer",
}


def overview(session: Session, summary: Overview, chart: Markup) -> Markup:
    states = _table(("state", "devices"), ((s, f"{n:,}") for s, n in summary.device_states))
    profiles = sorted({p for p, _ in summary.certificates})
    certs = _table(
        ("profile", *Bucket.ALL),
        ((p, *(f"{summary.certificates.get((p, b), 0):,}" for b in Bucket.ALL)) for p in profiles),
    )
    revs = _table(
        ("when", "actor", "selector", "value", "reason", "certificates", "devices"),
        (
            (
                f"{r.at:%Y-%m-%d %H:%M}",
                r.actor,
                r.selector,
                r.value,
                Reason(r.reason).rfc_name,
                r.certificates,
                r.devices,
            )
            for r in summary.revocations
        ),
        numeric_from=5,
    )
    status = _table(
        ("kind", "scope", "number", "bytes", "this update"),
        ((k, s, n, f"{size:,}", f"{at:%Y-%m-%d %H:%M}") for k, s, n, size, at in summary.published),
        numeric_from=2,
    )
    body = h(
        '<div class="grid"><section><h2>Devices by state</h2>{}</section>'
        "<section><h2>Certificates by profile and status</h2>{}</section></div>"
        '<div class="grid">{}</div>'
        '<section><h2>Expiry timeline: the next 52 weeks</h2><figure style="margin:0">{}</figure></section>'
        "<section><h2>Latest revocations</h2>{}</section>"
        "<section><h2>Published status data (latest of each)</h2>{}</section>",
        states,
        certs,
        join(_device_groups(summary, dimension) for dimension in Dimension),
        chart,
        revs,
        status,
    )
    return page(session, "Fleet overview", body)


def search(session: Session, prefix: str, rows: list[Any]) -> Markup:
    table = _table(
        ("serial", "state", "model", "lot"),
        ((_device_link(r.serial), r.state, r.model or "", r.lot or "") for r in rows),
        numeric_from=99,
    )
    return page(
        session, "Devices", h("<section><p>Serials starting with “{}”</p>{}</section>", prefix, table)
    )


def device(session: Session, found: DevicePage, may_revoke: bool, done: str) -> Markup:
    d = found.device
    facts = _table(
        ("serial", "state", "model", "lot", "hub", "created"),
        [(d.serial, d.state, d.model or "", d.lot or "", found.hub or "—", f"{d.created_at:%Y-%m-%d}")],
        numeric_from=99,
    )
    certs = _table(
        ("serial", "profile", "status", "not before", "not after", "revoked", "reason"),
        (
            (
                c.serial,
                c.profile,
                c.status,
                f"{c.not_before:%Y-%m-%d}",
                f"{c.not_after:%Y-%m-%d}",
                f"{c.revoked_at:%Y-%m-%d %H:%M}" if c.revoked_at else "",
                Reason(c.reason).rfc_name if c.reason is not None else "",
            )
            for c in found.certificates
        ),
        numeric_from=99,
    )
    notice = h('<p class="ok" role="status">Revoked: {} certificate(s).</p>', done) if done else Markup("")
    action = Markup("")
    if may_revoke:
        options = join(
            h('<option value="{}">{}</option>', r.value, r.rfc_name)
            for r in Reason
            if r is not Reason.REMOVE_FROM_CRL
        )
        action = h(
            '<section><h2>Revoke</h2><form action="/ui/devices/{}/revoke" method="post">{}'
            '<label>Reason <select name="reason">{}</select></label> '
            '<label>Note <input name="note" maxlength="200"></label> '
            '<label><input type="checkbox" name="confirm" value="yes" required> '
            "revoke this device and all its certificates</label> "
            '<button class="danger">Revoke</button></form></section>',
            quote(d.serial, safe=""),
            csrf_field(session),
            options,
        )
    body = h(
        "{}<section>{}</section><section><h2>Certificates</h2>{}</section>{}", notice, facts, certs, action
    )
    return page(session, f"Device {d.serial}", body)


def health(session: Session, findings: Sequence[Finding]) -> Markup:
    """The fleet health checks (`devid health`): what each found, worst first, with examples."""
    order = list(Severity)
    rows = sorted(findings, key=lambda f: (f.count == 0, order.index(f.severity)))
    body = join(
        h(
            '<tr><td>{}</td><td class="{}">{}</td><td class="n">{}</td><td>{}</td><td>{}</td></tr>',
            f.check,
            "err" if f.failing else "",
            f.severity.value,
            f"{f.count:,}{'+' if f.more else ''}",
            join(_example(e) if f.check not in _NOT_DEVICES else h("{} ", e) for e in f.examples[:5]),
            f.note,
        )
        for f in rows
    )
    table = h(
        "<table><thead><tr><th>check</th><th>severity</th><th>count</th><th>examples</th><th>what it looks at"
        "</th></tr></thead><tbody>{}</tbody></table>",
        body,
    )
    failing = sum(f.failing for f in findings)
    summary = h("<p>{} finding(s) at critical or high severity.</p>", failing)
    return page(session, "Fleet health", h("<section>{}{}</section>", summary, table))


def _example(text: str) -> Markup:
    """A device example (`SERIAL (detail)`), linked to its device page."""
    serial = text.split(" (", 1)[0]
    return h('<a href="/ui/devices/{}">{}</a> ', quote(serial, safe=""), text)


#: Checks whose examples are not device serials (CAs, keys).
_NOT_DEVICES = frozenset({"ca-expiring", "weak-key", "revoked-still-connected", "shared-public-key"})
