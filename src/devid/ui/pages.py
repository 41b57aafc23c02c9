"""The dashboard's pages as HTML (every value escaped by `devid.ui.html.h`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from urllib.parse import quote, urlencode

from devid.authority.health import Finding, Severity
from devid.pki.reasons import Reason
from devid.store.audit import Checkpoint, Verification
from devid.store.counters import Dimension
from devid.ui.html import Markup, h, join
from devid.ui.queries import TRAIL_WINDOW, Bucket, DevicePage, Listed, Overview, Trail
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
    ".wrap{display:inline-block;max-width:460px;overflow-wrap:anywhere;font-size:12px}form.inline{display:inline}"
    ".nw{white-space:nowrap}"
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


#: Every page's navigation bar.
NAV = (
    ("/ui", "Overview"),
    ("/ui/renewals", "Renewals"),
    ("/ui/revocations", "Revocations"),
    ("/ui/audit", "Audit log"),
    ("/ui/health", "Health"),
)


def csrf_field(session: Session) -> Markup:
    return h('<input type="hidden" name="csrf" value="{}">', session.csrf)


def page(session: Session, title: str, body: Markup) -> Markup:
    header = h(
        '<header><strong>devid</strong><nav style="display:flex;gap:16px">{}</nav>'
        '<form action="/ui/devices" method="get"><input name="q" placeholder="serial prefix" '
        'aria-label="device serial prefix"> <button>Search</button></form>'
        '<span>{} ({})</span><form action="/ui/logout" method="post" style="margin:0">{}'
        "<button>Log out</button></form></header>",
        join(h('<a href="{}">{}</a>', path, name) for path, name in NAV),
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


class StateAction(StrEnum):
    """The device page's state changes besides revocation (the form's `action` value)."""

    DISABLE = "disable"
    ACTIVATE = "activate"
    APPROVE = "approve"


_ACTION_TEXT = {
    StateAction.DISABLE: "set this device INACTIVE: enrollment and renewal are refused until activated",
    StateAction.ACTIVATE: "set this device ACTIVE",
    StateAction.APPROVE: "approve this device's held enrollment",
}


@dataclass(frozen=True)
class DeviceView:
    """What the device page shows besides the device: its trail, the forms the role may use, and
    the outcome of the last action (`notice`) or why it was refused (`error`)."""

    found: DevicePage
    trail: Trail
    #: False: the role may not read the audit log, so the page leaves the device's trail out.
    show_audit: bool
    may_revoke: bool
    actions: tuple[StateAction, ...]
    notice: str = ""
    error: str = ""


def _when(at: datetime | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    return f"{at:{fmt}}" if at else ""


def _confirm_form(session: Session, serial: str, action: StateAction) -> Markup:
    """A POST with the session's CSRF token and a confirmation box the browser requires ticked (the
    server checks it again)."""
    return h(
        '<form class="inline" action="/ui/devices/{}/state" method="post">{}'
        '<input type="hidden" name="action" value="{}"><label><input type="checkbox" name="confirm" '
        'value="yes" required> {}</label> <button name="go" value="{}">{}</button></form><br>',
        quote(serial, safe=""),
        csrf_field(session),
        action.value,
        _ACTION_TEXT[action],
        action.value,
        action.value.capitalize(),
    )


def device(session: Session, view: DeviceView) -> Markup:
    found = view.found
    d = found.device
    facts = _table(
        ("serial", "state", "model", "lot", "hub", "created", "approval"),
        [
            (
                d.serial,
                d.state,
                d.model or "",
                d.lot or "",
                found.hub or "—",
                _when(d.created_at, "%Y-%m-%d"),
                "approved " + _when(d.approved_at)
                if d.approved_at
                else ("pending since " + _when(d.approval_requested_at) if d.approval_requested_at else "—"),
            )
        ],
        numeric_from=99,
    )
    certs = _table(
        ("serial", "profile", "status", "not before", "not after", "revoked", "reason"),
        (
            (
                c.serial,
                c.profile,
                c.status,
                _when(c.not_before, "%Y-%m-%d"),
                _when(c.not_after, "%Y-%m-%d"),
                _when(c.revoked_at),
                Reason(c.reason).rfc_name if c.reason is not None else "",
            )
            for c in found.certificates
        ),
        numeric_from=99,
    )
    seen = (
        _table(
            ("gateway", "certificate", "profile", "first seen", "last seen", "seen revoked"),
            (
                (
                    g.gateway,
                    g.serial,
                    g.profile,
                    _when(g.first_seen),
                    _when(g.last_seen),
                    _when(g.revoked_seen_at) or "—",
                )
                for g in found.sightings
            ),
            numeric_from=99,
        )
        if found.sightings
        else h("<p>No gateway reported this device's certificates.</p>")
    )
    notice = h('<p class="ok" role="status">{}</p>', view.notice) if view.notice else Markup("")
    if view.error:
        notice = h('<p class="err" role="alert">{}</p>', view.error)
    forms = join(_confirm_form(session, d.serial, a) for a in view.actions)
    state = h("<section><h2>Change state</h2>{}</section>", forms) if view.actions else Markup("")
    action = Markup("")
    if view.may_revoke:
        options = join(
            h('<option value="{}">{}</option>', r.value, r.rfc_name)
            for r in Reason
            if r is not Reason.REMOVE_FROM_CRL
        )
        action = h(
            '<section><h2>Revoke</h2><form action="/ui/devices/{}/revoke" method="post">{}'
            '<label>Reason <select name="reason"><option value="">choose…</option>{}</select></label> '
            '<label>Note <input name="note" maxlength="200"></label> '
            '<label><input type="checkbox" name="confirm" value="yes" required> '
            "revoke this device and all its certificates</label> "
            '<button class="danger">Revoke</button></form></section>',
            quote(d.serial, safe=""),
            csrf_field(session),
            options,
        )
    events = _table(
        ("id", "when", "type", "payload"),
        (
            (e.id, _when(e.at), e.type, h('<span class="wrap">{}</span>', e.payload))
            for e in view.trail.events
        ),
        numeric_from=99,
    )
    audit_trail = (
        h(
            "<section><h2>Audit trail (newest first, among the log's latest {} events)</h2>{}</section>",
            f"{TRAIL_WINDOW:,}",
            audit_table(view.trail.audit),
        )
        if view.show_audit
        else h(
            "<section><h2>Audit trail</h2><p>Role {} may not read the audit log.</p></section>",
            session.role.value,
        )
    )
    body = h(
        "{}<section>{}</section><section><h2>Certificates</h2>{}</section>"
        "<section><h2>Seen at gateways</h2>{}</section>{}{}"
        "<section><h2>Events (newest first, among the latest {} events)</h2>{}</section>{}",
        notice,
        facts,
        certs,
        seen,
        state,
        action,
        f"{TRAIL_WINDOW:,}",
        events,
        audit_trail,
    )
    return page(session, f"Device {d.serial}", body)


def audit_table(rows: Iterable[Any]) -> Markup:
    return _table(
        ("seq", "when", "actor", "action", "outcome", "subject", "detail"),
        (
            (
                r.seq,
                h('<span class="nw">{}</span>', _when(r.at, "%Y-%m-%d %H:%M:%S")),
                r.actor,
                r.action,
                h('<span class="{}">{}</span>', "err" if r.outcome != "ok" else "", r.outcome),
                r.subject,
                h('<span class="wrap">{}</span>', r.detail),
            )
            for r in rows
        ),
        numeric_from=99,
    )


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
_NOT_DEVICES = frozenset({"ca-expiring", "weak-key", "shared-public-key"})


@dataclass(frozen=True)
class Tally:
    """One line of the renewals page: what it counts, how many, and the first devices linked."""

    title: str
    note: str
    found: Listed
    devices: tuple[Markup, ...]


def renewals(session: Session, tallies: Sequence[Tally]) -> Markup:
    """Renewal health: due, overdue, failed, fallen back to the IDevID, awaiting approval."""
    rows = join(
        h(
            '<tr><td><strong>{}</strong><br><small>{}</small></td><td class="n">{}</td><td>{}</td></tr>',
            t.title,
            t.note,
            f"{t.found.count:,}{'+' if t.found.capped else ''}",
            join(t.devices) if t.devices else "—",
        )
        for t in tallies
    )
    table = h(
        "<table><thead><tr><th>renewal state</th><th>devices</th><th>the first of them</th></tr></thead>"
        "<tbody>{}</tbody></table>",
        rows,
    )
    return page(session, "Renewal health", h("<section>{}</section>", table))


def device_links(items: Iterable[tuple[str, str]]) -> tuple[Markup, ...]:
    """(serial, detail) pairs as links to their device pages."""
    return tuple(h('<a href="/ui/devices/{}">{}</a> ({}) ', quote(s, safe=""), s, d) for s, d in items)


@dataclass(frozen=True)
class RevocationsView:
    by_reason: list[Any]
    by_selector: list[Any]
    #: Lot revocations, by lot (the largest first).
    by_lot: list[Any]
    #: Certificates revoked per week, by reason.
    chart: Markup
    listed: list[Any]
    reason: int | None
    selector: str
    #: Where the next (older) page starts, if the page is full.
    next_before: int | None
    published: list[tuple[str, str, int, int, datetime]]
    #: One OCSP answer per issuing CA: (CA, bytes, bytes without the responder certificate).
    ocsp: tuple[tuple[str, int, int], ...] = ()


def revocations(session: Session, view: RevocationsView) -> Markup:
    def totals(rows: list[Any], name: Any) -> Markup:
        return _table(
            ("by", "actions", "certificates", "devices"),
            (
                (name(r.key), f"{r.actions:,}", f"{r.certificates or 0:,}", f"{r.devices or 0:,}")
                for r in rows
            ),
        )

    reasons = join(
        h(
            '<option value="{}"{}>{}</option>',
            r.value,
            " selected" if r.value == view.reason else "",
            r.rfc_name,
        )
        for r in Reason
    )
    selectors = join(
        h('<option value="{}"{}>{}</option>', s, " selected" if s == view.selector else "", s)
        for s in ("device", "lot", "model", "manufacturer", "serial")
    )
    filters = h(
        '<form action="/ui/revocations" method="get"><label>Reason <select name="reason">'
        '<option value="">any</option>{}</select></label> <label>Selector <select name="selector">'
        '<option value="">any</option>{}</select></label> <button>Filter</button></form>',
        reasons,
        selectors,
    )
    listed = _table(
        ("id", "when", "actor", "selector", "value", "reason", "note", "certificates", "devices"),
        (
            (
                r.id,
                _when(r.at),
                r.actor,
                r.selector,
                _device_link(r.value) if r.selector == "device" else r.value,
                Reason(r.reason).rfc_name,
                r.note,
                f"{r.certificates:,}",
                f"{r.devices:,}",
            )
            for r in view.listed
        ),
        numeric_from=7,
    )
    more = Markup("")
    if view.next_before is not None:
        query = urlencode(
            {
                "reason": "" if view.reason is None else view.reason,
                "selector": view.selector,
                "before": view.next_before,
            }
        )
        more = h('<p><a href="/ui/revocations?{}">Older revocations →</a></p>', query)
    status = _table(
        ("kind", "scope", "number", "bytes", "this update"),
        ((k, s, n, f"{size:,}", _when(at)) for k, s, n, size, at in view.published),
        numeric_from=2,
    )
    answers = _table(
        ("issuing CA", "bytes", "without the responder certificate"),
        ((name, f"{size:,}", f"{bare:,}") for name, size, bare in view.ocsp),
    )
    body = h(
        '<div class="grid"><section><h2>By reason</h2>{}</section><section><h2>By selector</h2>{}</section>'
        "<section><h2>By lot (lot revocations)</h2>{}</section></div>"
        "<section><h2>Certificates revoked per week</h2>{}</section>"
        "<section><h2>Revocations, newest first</h2>{}{}{}</section>"
        "<section><h2>Current status data: CRLs, deltas, filters (latest of each)</h2>{}"
        "<h3>One OCSP response (for each CA's latest certificate)</h3>{}"
        "<p><small>OCSP answers are signed on request and cached in each server's memory; these are "
        "this server's answers now. A device fetching its own status pays one of these per check; "
        "a CRL or filter covers the whole fleet.</small></p></section>",
        totals(view.by_reason, lambda k: Reason(k).rfc_name),
        totals(view.by_selector, str),
        totals(view.by_lot, str) if view.by_lot else h("<p>No lot was revoked.</p>"),
        view.chart,
        filters,
        listed,
        more,
        status,
        answers,
    )
    return page(session, "Revocations", body)


@dataclass(frozen=True)
class AuditView:
    rows: list[Any]
    action: str
    next_before: int | None
    head: int
    checkpoint: Checkpoint | None
    #: Whether the last checkpoint is signed by the audit key and names the chain's hash at its seq.
    checkpoint_ok: bool
    #: The result of a full verification, when one was asked for.
    verification: Verification | None


def audit(session: Session, view: AuditView) -> Markup:
    cp = view.checkpoint
    if cp is None:
        anchor = h("<p>No checkpoint yet: <code>devid audit checkpoint</code> signs one.</p>")
    else:
        anchor = h(
            '<p>Last checkpoint: event {} at {} by key {}: <strong class="{}">{}</strong>; '
            "{} event(s) after it.</p>",
            cp.seq,
            _when(cp.at),
            cp.key_label,
            "ok" if view.checkpoint_ok else "err",
            "signature and hash match the chain" if view.checkpoint_ok else "DOES NOT match the chain",
            f"{view.head - cp.seq:,}",
        )
    result = Markup("")
    v = view.verification
    if v is not None:
        result = (
            h(
                '<p class="ok" role="status">Whole chain verified: {} events, {} checkpoint(s), '
                "anchored up to event {}.</p>",
                f"{v.events:,}",
                v.checkpoints,
                v.anchored_seq,
            )
            if v.ok
            else h('<p class="err" role="alert">Chain broken at event {}: {}.</p>', v.broken_seq, v.reason)
        )
    verify = h(
        '<form action="/ui/audit/verify" method="post">{}<button>Verify the whole chain now</button> '
        "<small>(reads every event: minutes on a long log)</small></form>",
        csrf_field(session),
    )
    filters = h(
        '<form action="/ui/audit" method="get"><label>Action <input name="action" value="{}" '
        'placeholder="e.g. revocation"></label> <button>Filter</button></form>',
        view.action,
    )
    more = Markup("")
    if view.next_before is not None:
        more = h(
            '<p><a href="/ui/audit?{}">Older events →</a></p>',
            urlencode({"action": view.action, "before": view.next_before}),
        )
    body = h(
        "<section><h2>Verification</h2><p>The chain has {} event(s).</p>{}{}{}</section>"
        "<section><h2>Events, newest first</h2>{}{}{}</section>",
        f"{view.head:,}",
        anchor,
        result,
        verify,
        filters,
        audit_table(view.rows),
        more,
    )
    return page(session, "Audit log", body)
