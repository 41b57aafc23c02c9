"""`devid scep allow-rsa` / `deny-rsa`: opting one label's SCEP into RSA device keys, the one
deviation from ECC-only (for legacy SCEP clients that make RSA keys only). Stored in the label's
policy in devid.toml and audited; a running server takes it up when restarted."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine

from devid.authority.policy import LabelPolicy
from devid.config import Home
from devid.errors import NotFoundError
from devid.store import audit
from devid.store.engine import writing


def set_scep_rsa(home: Home, engine: Engine, label: str, allowed: bool, *, actor: str, now: datetime) -> bool:
    """Allow (or deny) RSA-2048/3072 device keys over SCEP on `label`; False when it already was so."""
    labels = home.config.est_labels
    if label not in labels:
        raise NotFoundError("unknown-label", f"no label {label!r} is configured")
    policy = LabelPolicy.from_config(label, labels[label])
    if policy.scep_rsa == allowed:
        return False
    labels[label] = {k: v for k, v in labels[label].items() if k != "scep_rsa"} | (
        {"scep_rsa": True} if allowed else {}
    )
    action = "scep.allow-rsa" if allowed else "scep.deny-rsa"
    with writing(engine) as conn:
        audit.append(conn, [audit.Event(action, label or "(base)", actor, "ok", {"label": label})], now)
        home.save()
    return True
