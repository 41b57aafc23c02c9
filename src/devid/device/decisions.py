"""What a device agent decides at a check-in, apart from how it talks to the CA.

The agent (`devid.device.agent`) runs this logic over EST with its secure element and files; the
fleet simulator (`devid.sim`) runs the same logic over a simulated link against a real or modelled
CA, so what the simulator reports is what devid's agents would do, not a re-implementation of them.
The seam is `Transport`: the two requests a device makes (enroll with its IDevID, renew with its
LDevID), each returning what was issued or raising `EstError` with the server's status.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from devid.errors import DevidError
from devid.est.client import EstError

BACKOFF_BASE = timedelta(minutes=1)
BACKOFF_CAP = timedelta(hours=6)
#: Statuses after which the current LDevID cannot renew itself and the IDevID must step in.
FALLBACK_STATUSES = {401, 403}
#: A session certificate is renewed this long before it ends, so a connection never starts on one
#: about to lapse.
SESSION_MARGIN = timedelta(minutes=5)
SESSION_POLICY = "session"


class Action(StrEnum):
    """What a check-in must do."""

    ENROLL = "enroll"
    FALLBACK = "fallback"
    RENEW = "renew"
    SESSION = "session"


@dataclass(frozen=True)
class Issued:
    """What the CA issued, as far as the decisions need it."""

    serial: int
    fingerprint: str
    not_before: datetime
    not_after: datetime
    policy: str | None
    renew_at: datetime | None


class Jitter(Protocol):
    """Where the back-off's jitter comes from (a `random.Random`, or the simulator's per-device stream)."""

    def random(self) -> float: ...


class Transport(Protocol):
    """The device's two requests; a refusal raises `EstError` (status 0: no answer)."""

    async def enroll_with_idevid(self) -> Issued: ...

    async def renew_with_ldevid(self) -> Issued: ...


#: The agent keeps its last events for `devid agent status`.
EVENTS_KEPT = 20
_TIMES = ("ldevid_not_after", "renew_at", "session_not_after", "next_attempt", "last_success")


@dataclass
class AgentState:
    """What the agent knows between check-ins (saved as JSON in the device folder)."""

    server: str
    label: str
    trust_pem: str
    policy: str | None = None
    ldevid_fingerprint: str | None = None
    ldevid_not_after: datetime | None = None
    renew_at: datetime | None = None
    session_not_after: datetime | None = None
    failures: int = 0
    next_attempt: datetime | None = None
    last_success: datetime | None = None
    last_error: str | None = None
    #: (when, what, what was issued): rendered only when saved or shown, since the simulator
    #: notes millions.
    events: deque[tuple[datetime, str, Issued | None]] = field(
        default_factory=lambda: deque(maxlen=EVENTS_KEPT)
    )

    def note(self, now: datetime, text: str, issued: Issued | None = None) -> None:
        self.events.append((now, text, issued))

    def event_lines(self) -> list[str]:
        return [
            f"{at.isoformat()} {text}"
            + (f": serial {i.serial:x}, valid to {i.not_after:%Y-%m-%d %H:%M}" if i else "")
            for at, text, i in self.events
        ]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for name in _TIMES:
            data[name] = data[name].isoformat() if data[name] else None
        data["events"] = self.event_lines()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AgentState:
        values = dict(data)
        for name in _TIMES:
            values[name] = datetime.fromisoformat(values[name]) if values.get(name) else None
        events: deque[tuple[datetime, str, Issued | None]] = deque(maxlen=EVENTS_KEPT)
        for line in values.pop("events", []):
            at, _, text = line.partition(" ")
            events.append((datetime.fromisoformat(at), text, None))
        return cls(**values, events=events)


def due(state: AgentState, ldevid_not_after: datetime | None, now: datetime) -> Action | None:
    """What this check-in must do (None: nothing). `ldevid_not_after` is the installed LDevID's end
    (None: no LDevID installed)."""
    if state.next_attempt and now < state.next_attempt:
        return None
    if state.policy == SESSION_POLICY:
        end = state.session_not_after
        return Action.SESSION if end is None or now >= end - SESSION_MARGIN else None
    if ldevid_not_after is None:
        return Action.ENROLL
    if now >= ldevid_not_after:
        return Action.FALLBACK
    renew = state.renew_at
    return Action.RENEW if renew is not None and now >= renew else None


def next_due(state: AgentState, ldevid_not_after: datetime | None, now: datetime) -> datetime:
    """The earliest moment from `now` on at which `due` answers something: a device may sleep until
    then, and the simulator skips the check-ins before it."""
    if state.policy == SESSION_POLICY:
        end = state.session_not_after
        at = now if end is None else end - SESSION_MARGIN
    elif ldevid_not_after is None:
        at = now
    else:
        renew = state.renew_at
        at = ldevid_not_after if renew is None else min(renew, ldevid_not_after)
    return max(at, state.next_attempt or now, now)


def accept(state: AgentState, issued: Issued, now: datetime, what: str) -> None:
    """Take an issued certificate as the device's identity and reset the back-off."""
    session = issued.policy == SESSION_POLICY
    state.policy = issued.policy
    if session:
        state.session_not_after = issued.not_after
    else:
        state.ldevid_fingerprint = issued.fingerprint
        state.ldevid_not_after = issued.not_after
    state.renew_at = issued.renew_at
    state.failures, state.next_attempt, state.last_error = 0, None, None
    state.last_success = now
    state.note(now, what, issued)


def back_off(state: AgentState, now: datetime, exc: DevidError, rng: Jitter) -> None:
    """Wait before the next attempt: the server's Retry-After, else exponential, capped, then
    jittered within [1/2, 1] of that, so a fleet that lost the server at the same moment does not
    come back in one wave."""
    state.failures += 1
    if isinstance(exc, EstError) and exc.retry_after:
        delay = timedelta(seconds=exc.retry_after)
    else:
        ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(state.failures - 1, 20))
        delay = ceiling * (0.5 + 0.5 * rng.random())
    state.next_attempt = now + delay
    state.last_error = exc.message
    state.note(now, f"failed ({exc.message}); next attempt {state.next_attempt.isoformat()}")


async def check_in(
    state: AgentState,
    ldevid_not_after: datetime | None,
    transport: Transport,
    now: datetime,
    rng: Jitter,
) -> str:
    """One connection's worth of work; returns what happened: idle, enroll, fallback, renew,
    session or `error: <message> [<code>]`. The state changes in memory only: the caller saves it."""
    action = due(state, ldevid_not_after, now)
    if action is None:
        return "idle"
    try:
        if action is not Action.RENEW:
            accept(state, await transport.enroll_with_idevid(), now, f"{action} with IDevID")
            return action.value
        try:
            accept(state, await transport.renew_with_ldevid(), now, "renewed with LDevID")
            return Action.RENEW.value
        except EstError as exc:
            if exc.status not in FALLBACK_STATUSES:
                raise
            issued = await transport.enroll_with_idevid()
            accept(state, issued, now, f"fallback after {exc.status} {exc.message} with IDevID")
            return Action.FALLBACK.value
    except DevidError as exc:
        back_off(state, now, exc, rng)
        return f"error: {exc.message} [{exc.code}]"
