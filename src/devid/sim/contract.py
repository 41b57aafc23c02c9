"""A contract manufacturer outside devid: its own root and device-signing CA, its devices' IDevIDs,
and the fleet-onboarding setup an operator makes for it (registration with proof of possession,
hubs, an enrollment group). Used by the demo and by `devid bench onboard`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devid.authority.core import Authority
from devid.pki.encoding import cert_pem
from devid.pki.serials import random_serial
from devid.registry import enrollments, hubs, manufacturers
from devid.registry.allocation import Allocation
from devid.registry.enrollments import Kind, Settings
from devid.store.engine import reading


def _name(org: str, cn: str, serial: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)]
    if serial is not None:
        attrs.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, serial))
    return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _certificate(
    subject: x509.Name,
    key: ec.EllipticCurvePublicKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    now: datetime,
    *,
    ca: bool,
    days: int,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(random_serial())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        # Key identifiers let TLS stacks pick the right issuer among CAs that share a name.
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    )
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass(frozen=True)
class ContractManufacturer:
    org: str
    root: x509.Certificate
    root_key: ec.EllipticCurvePrivateKey
    signing: x509.Certificate
    signing_key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, org: str, now: datetime) -> ContractManufacturer:
        root_key = ec.generate_private_key(ec.SECP256R1())
        root_name = _name(org, f"{org} Root CA")
        root = _certificate(root_name, root_key.public_key(), root_name, root_key, now, ca=True, days=7300)
        signing_key = ec.generate_private_key(ec.SECP256R1())
        signing = _certificate(
            _name(org, f"{org} Device Signing CA"), signing_key.public_key(), root_name, root_key, now,
            ca=True, days=3650,
        )  # fmt: skip
        return cls(org, root, root_key, signing, signing_key)

    def verification(self, code: str, now: datetime) -> bytes:
        """A verification certificate (CN = the registration code) signed with the root's key."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, code)])
        return cert_pem(
            _certificate(name, key.public_key(), self.root.subject, self.root_key, now, ca=False, days=1)
        )

    def device(self, serial: str, now: datetime) -> tuple[list[x509.Certificate], ec.EllipticCurvePrivateKey]:
        """An IDevID (subject serialNumber, 802.1AR) with the chain the device sends, and its key."""
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = _certificate(
            _name(self.org, "Sensor", serial), key.public_key(), self.signing.subject, self.signing_key, now,
            ca=False, days=7300,
        )  # fmt: skip
        return [leaf, self.signing], key


def onboard_manufacturer(
    authority: Authority,
    maker: ContractManufacturer,
    name: str,
    hub_names: list[str],
    allocation: Allocation = Allocation.HASHED,
    actor: str = "demo",
) -> enrollments.EnrollmentInfo:
    """What an operator does for a new contract manufacturer: register its CA with proof of
    possession (JITR on, devices active at once), create the hubs, and an enrollment group that
    attests its devices by the signing CA and allocates them over the hubs."""
    now = authority.clock.now()
    code = manufacturers.create_registration_code(authority, actor)
    manufacturers.register(
        authority, name, cert_pem(maker.root), maker.verification(code, now),
        auto_register=True, auto_activate=True, actor=actor,
    )  # fmt: skip
    with reading(authority.engine) as conn:
        existing = {h.name for h in hubs.list_all(conn)}
    for hub in hub_names:
        if hub not in existing:
            hubs.create(authority, hub, f"mqtts://{hub}.example.net:8883", hub.split("-")[-1], actor=actor)
    return enrollments.create(
        authority, Kind.GROUP, f"{name}-devices", Settings(allocation=allocation, hubs=tuple(hub_names)),
        signing_cert=cert_pem(maker.signing), actor=actor,
    )  # fmt: skip
