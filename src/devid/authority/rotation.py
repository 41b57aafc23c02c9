"""Rolling an issuing CA over: a successor, an overlap, a retirement.

`rotate` makes the successor of the manufacturing or operational CA (a new key in the home's
keystore, software or PKCS#11, certified by the root, with a subject of its own so chains build
by name). It is ACTIVE from then on: new certificates come from it and `/cacerts` serves it. The
CA it replaces is RETIRING: still trusted for client authentication, so a device renews with the
LDevID it holds and its next renewal moves it to the successor. `retire` ends the overlap once no
device still holds an unexpired certificate of the old CA (or when forced): it then issues
nothing and authenticates no one, while its CRLs and OCSP answers go on being served for the
certificates it issued. The state lives in the `role` column (`devid.authority.core.CaState`):
running servers see it when they restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography.hazmat.primitives import hashes
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from devid.authority.ca_records import record_ca
from devid.authority.core import ISSUING_ROLES, RETIRED_ROLE, Authority, CaState
from devid.authority.setup import HIERARCHY, ca_profile
from devid.errors import ConflictError, NotFoundError, PolicyError
from devid.pki.profiles import ProfileName, Template, ca_subject
from devid.pki.serials import random_serial, serial_hex
from devid.store import audit
from devid.store.engine import reading, writing
from devid.store.models import cas, certificates
from devid.store.states import CertificateStatus


@dataclass(frozen=True)
class Rotation:
    """A successor made: `new` is ACTIVE, `previous` RETIRING until `retire_after` (the schedule)."""

    role: str
    previous: str
    new: str
    serial: str
    not_after: datetime
    retire_after: datetime


@dataclass(frozen=True)
class Outstanding:
    """What a CA's retirement would strand: unexpired valid device certificates, by profile."""

    by_profile: dict[str, int]
    #: When the last certificate the CA issued expires (its status is served until then).
    last_expiry: datetime | None

    @property
    def total(self) -> int:
        return sum(self.by_profile.values())

    def text(self) -> str:
        return ", ".join(f"{n} {profile}" for profile, n in sorted(self.by_profile.items()))


def rotate(authority: Authority, role: str, overlap: timedelta | None, actor: str) -> Rotation:
    """Make the successor of `role`'s ACTIVE CA; it issues from the next server start on. The
    overlap (default: the LDevID lifetime, in which every device renews once) only schedules the
    retirement: `retire` checks what is still outstanding, not the date."""
    if role not in ISSUING_ROLES:
        raise PolicyError(
            "ca-role", f"only the {' or '.join(sorted(ISSUING_ROLES))} CA rolls over, not {role!r}"
        )
    overlap = overlap or authority.profile(ProfileName.LDEVID).validity or timedelta(days=365)
    if overlap <= timedelta(0):
        raise PolicyError("overlap-days", "the overlap must be at least one day")
    previous = authority.issuers_of(role)[0]
    root = authority.cas["root"]
    keystore = root.keystore
    number = 2
    while True:  # the first generation number with neither a CA nor a key (a crashed attempt's)
        name = f"{role}-{number}"
        if name not in authority.cas:
            try:
                key = keystore.generate(authority.key_prefix + name)
                break
            except ConflictError:
                pass
        number += 1
    now = authority.clock.now().replace(microsecond=0)
    _, _, _, profile_name, common_name = next(h for h in HIERARCHY if h[0] == role)
    subject = ca_subject(authority.org, f"{authority.org} {common_name} {number}")
    serial = random_serial()
    cert = (
        Template.for_issuer(ca_profile(role, profile_name), root.certificate)
        .builder(subject, key.public_key(), serial, now)
        .sign(root.key, hashes.SHA256())
    )
    retire_after = now + overlap
    with writing(authority.engine) as conn:
        try:
            record_ca(
                conn,
                name=name,
                role=role,
                parent_id=root.id,
                key_label=authority.key_prefix + name,
                certificate=cert,
                now=now,
                crl_shards=previous.crl_shards,
            )
        except IntegrityError:
            raise ConflictError(
                "ca-rotated-meanwhile",
                f"another rotation of the {role} CA ran meanwhile: see `devid ca list`",
            ) from None
        detail = {
            "role": role,
            "previous": previous.name,
            "serial": serial_hex(serial),
            "retire_after": retire_after.isoformat(),
            "key_backend": keystore.backend,
        }
        audit.append(conn, [audit.Event("ca.rotate", name, actor, "ok", detail)], now)
    return Rotation(role, previous.name, name, serial_hex(serial), cert.not_valid_after_utc, retire_after)


def outstanding(authority: Authority, name: str) -> Outstanding:
    """The device certificates of CA `name` that are valid and unexpired: not renewed yet."""
    ca = authority.cas[name]
    now = authority.clock.now()
    with reading(authority.engine) as conn:
        counts = conn.execute(
            select(certificates.c.profile, func.count())
            .where(
                certificates.c.issuer_id == ca.id,
                certificates.c.status == CertificateStatus.VALID,
                certificates.c.not_after > now,
                certificates.c.device_id.is_not(None),
            )
            .group_by(certificates.c.profile)
        ).all()
        # Its own OCSP responders' certificates aside: they are renewed as long as status is served.
        last = conn.execute(
            select(func.max(certificates.c.not_after)).where(
                certificates.c.issuer_id == ca.id, certificates.c.profile != ProfileName.OCSP_SIGNER.value
            )
        ).scalar_one()
    return Outstanding({profile: int(n) for profile, n in counts}, last)


def retire(authority: Authority, name: str, *, force: bool, actor: str) -> Outstanding:
    """End the overlap of RETIRING CA `name`; refused while devices still hold unexpired
    certificates of it, unless `force` (those devices then fall back to their IDevID)."""
    if name not in authority.cas:
        raise NotFoundError("unknown-ca", f"no CA named {name!r}: see `devid ca list`")
    state, role = authority.ca_state(name), authority.cas[name].role
    if state is CaState.RETIRED:
        raise ConflictError("ca-retired", f"CA {name!r} is already retired")
    if role not in ISSUING_ROLES:
        raise PolicyError("ca-role", f"CA {name!r} ({role}) does not roll over: nothing to retire")
    if state is CaState.ACTIVE:
        raise PolicyError(
            "ca-active", f"CA {name!r} is the active {role} CA: `devid ca rotate --ca {role}` first"
        )
    left = outstanding(authority, name)
    if left.total and not force:
        raise PolicyError(
            "ca-in-use",
            f"CA {name!r} still has {left.total} unexpired certificate(s) not renewed ({left.text()}): "
            "retire it once their devices renewed, or with --force",
        )
    now = authority.clock.now()
    with writing(authority.engine) as conn:
        changed = conn.execute(
            update(cas).where(cas.c.name == name, cas.c.role == role).values(role=RETIRED_ROLE)
        ).rowcount
        if changed != 1:
            raise ConflictError("ca-retired", f"CA {name!r} was retired meanwhile")
        detail = {"role": role, "outstanding": left.total, "forced": force}
        audit.append(conn, [audit.Event("ca.retire", name, actor, "ok", detail)], now)
    return left
