"""Certificate profiles: what each kind of certificate devid issues looks like.

A profile fixes validity, key usage, extended key usage and CA powers. What a CSR asks for never
overrides it: only the subject public key (and, for servers, the names the operator gives) comes
from the request.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from devid.errors import PolicyError
from devid.pki.lint import check_fields, require_clean

#: RFC 5280 4.1.2.5: "no well-defined expiration date" for device certificates (IDevID default).
FOREVER = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
#: notBefore is set this far in the past so devices with slightly slow clocks accept new certificates.
CLOCK_SKEW = timedelta(minutes=5)
OCSP_NOCHECK = x509.ObjectIdentifier("1.3.6.1.5.5.7.48.1.5")


class ProfileName(StrEnum):
    ROOT_CA = "root-ca"
    INTERMEDIATE_CA = "intermediate-ca"
    IDEVID = "idevid"
    LDEVID = "ldevid"
    SESSION = "session"
    OCSP_SIGNER = "ocsp-signer"
    SERVER = "server"
    MATTER_PAA = "matter-paa"
    MATTER_PAI = "matter-pai"
    MATTER_DAC = "matter-dac"
    #: A device certificate for an RSA key, issued over SCEP only on a label opted into RSA.
    SCEP_RSA = "scep-rsa"
    #: The SCEP registration authority: decrypts requests (RSA key transport), signs CertReps.
    SCEP_RA = "scep-ra"


def _key_usage(*, signature: bool = False, cert_sign: bool = False, encipher: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=signature,
        content_commitment=False,
        key_encipherment=encipher,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass(frozen=True)
class Profile:
    """A certificate profile. `validity=None` means notAfter 99991231235959Z."""

    name: ProfileName
    validity: timedelta | None
    key_usage: x509.KeyUsage
    extended_key_usage: tuple[x509.ObjectIdentifier, ...] = ()
    is_ca: bool = False
    path_length: int | None = None
    ocsp_nocheck: bool = False
    for_device: bool = False
    hardware_module_name: bool = False
    #: Certificates name where their status is served (AIA OCSP, CRL distribution point) when the
    #: deployment has a public URL. Not Matter's: its revocation is the DCL's, not devid's CRLs.
    status_urls: bool = True
    #: An end-entity certificate for no protocol's use (no extendedKeyUsage): a Matter DAC signs
    #: attestations, and the Matter profile makes extendedKeyUsage optional.
    purpose_free: bool = False

    def with_validity(self, validity: timedelta | None) -> Profile:
        return replace(self, validity=validity)

    def not_after(self, now: datetime, issuer_not_after: datetime | None) -> datetime:
        """Profile lifetime from `now`, never past the issuer's own notAfter."""
        end = FOREVER if self.validity is None else min(now + self.validity, FOREVER)
        return end if issuer_not_after is None else min(end, issuer_not_after)


PROFILES: dict[ProfileName, Profile] = {
    p.name: p
    for p in (
        Profile(ProfileName.ROOT_CA, None, _key_usage(cert_sign=True), is_ca=True, path_length=1),
        Profile(ProfileName.INTERMEDIATE_CA, None, _key_usage(cert_sign=True), is_ca=True, path_length=0),
        Profile(
            ProfileName.IDEVID,
            None,
            _key_usage(signature=True),
            (ExtendedKeyUsageOID.CLIENT_AUTH,),
            for_device=True,
            hardware_module_name=True,
        ),
        Profile(
            ProfileName.LDEVID,
            timedelta(days=365),
            _key_usage(signature=True),
            (ExtendedKeyUsageOID.CLIENT_AUTH,),
            for_device=True,
            hardware_module_name=True,
        ),
        Profile(
            ProfileName.SESSION,
            timedelta(hours=1),
            _key_usage(signature=True),
            (ExtendedKeyUsageOID.CLIENT_AUTH,),
            for_device=True,
            hardware_module_name=True,
        ),
        Profile(
            ProfileName.OCSP_SIGNER,
            timedelta(days=90),
            _key_usage(signature=True),
            (ExtendedKeyUsageOID.OCSP_SIGNING,),
            ocsp_nocheck=True,
        ),
        Profile(
            ProfileName.SERVER,
            timedelta(days=397),
            _key_usage(signature=True),
            (ExtendedKeyUsageOID.SERVER_AUTH,),
        ),
        # Matter Core Specification 6.2.2: a PAA with pathLen 1, a PAI with 0 (both keyCertSign and
        # cRLSign), a DAC with digitalSignature only; all of them with notAfter 99991231235959Z
        # (devices outlive any intermediate's schedule). VID/PID go in the subject (pki.matter).
        Profile(
            ProfileName.MATTER_PAA,
            None,
            _key_usage(cert_sign=True),
            is_ca=True,
            path_length=1,
            status_urls=False,
        ),
        Profile(
            ProfileName.MATTER_PAI,
            None,
            _key_usage(cert_sign=True),
            is_ca=True,
            path_length=0,
            status_urls=False,
        ),
        Profile(
            ProfileName.MATTER_DAC,
            None,
            _key_usage(signature=True),
            for_device=True,
            status_urls=False,
            purpose_free=True,
        ),
        # The one deviation from ECC-only: legacy SCEP clients make RSA keys only. Short-lived by
        # default, and a profile of its own so every such certificate can be found and counted.
        Profile(
            ProfileName.SCEP_RSA,
            timedelta(days=30),
            _key_usage(signature=True, encipher=True),
            (ExtendedKeyUsageOID.CLIENT_AUTH,),
            for_device=True,
            hardware_module_name=True,
        ),
        Profile(
            ProfileName.SCEP_RA,
            timedelta(days=365),
            _key_usage(signature=True, encipher=True),
            purpose_free=True,
        ),
    )
}


def profile(name: str) -> Profile:
    try:
        return PROFILES[ProfileName(name)]
    except ValueError:
        known = ", ".join(p.value for p in ProfileName)
        raise PolicyError("unknown-profile", f"unknown profile {name!r}; known: {known}") from None


def ca_subject(org: str, common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


@functools.lru_cache(maxsize=64)
def _org_attribute(org: str) -> x509.NameAttribute[str]:
    return x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)


def device_subject(org: str, device_serial: str, common_name: str | None = None) -> x509.Name:
    """802.1AR device subject: the device serial in the serialNumber attribute (2.5.4.5)."""
    return x509.Name(
        [
            _org_attribute(org),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name or device_serial),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, device_serial),
        ]
    )


_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def server_names(dns: Sequence[str], ips: Sequence[str]) -> list[x509.GeneralName]:
    """DNS and IP subjectAltNames for a TLS server certificate; refuses malformed entries."""
    names: list[x509.GeneralName] = []
    for name in dns:
        host = name.strip().lower().rstrip(".")
        labels = host.split(".")
        # A wildcard may stand only as the whole leftmost label (RFC 6125 6.4.3).
        checked = labels[1:] if labels[0] == "*" and len(labels) > 2 else labels
        if len(host) > 253 or not all(_DNS_LABEL.fullmatch(part) for part in checked):
            raise PolicyError(
                "bad-dns-name", f"not a DNS name: {name!r} (letters, digits and hyphens per label)"
            )
        names.append(x509.DNSName(host))
    for ip in ips:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise PolicyError("bad-ip-address", f"not an IP address: {ip!r}") from None
    return names


@dataclass
class Template:
    """Everything of a (profile, issuer) pair that is the same for every certificate, built once.

    Issuance at factory rates spends a third of its time building Python extension objects; the
    constant ones are made here once and the builder is constructed with its whole extension list
    (no per-call `add_extension` duplicate scans).
    """

    profile: Profile
    issuer_name: x509.Name
    issuer_not_after: datetime | None
    issuer_key_id: x509.AuthorityKeyIdentifier | None
    #: Where relying parties ask for status: the AIA OCSP URL, and the CRL distribution point of
    #: each shard (index = shard). Empty: the certificate points nowhere.
    ocsp_url: str | None = None
    crl_urls: tuple[str, ...] = ()
    _constant: list[x509.Extension[x509.ExtensionType]] = field(init=False)
    _crl_points: list[x509.Extension[x509.ExtensionType]] = field(init=False)
    #: Set once the first certificate of this template passed the pre-issuance lint.
    _linted: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        p = self.profile
        values: list[tuple[x509.ExtensionType, bool]] = [
            (p.key_usage, True),
            (x509.BasicConstraints(ca=p.is_ca, path_length=p.path_length if p.is_ca else None), True),
        ]
        if p.extended_key_usage:
            values.append((x509.ExtendedKeyUsage(list(p.extended_key_usage)), False))
        if p.ocsp_nocheck:
            values.append((x509.UnrecognizedExtension(OCSP_NOCHECK, b"\x05\x00"), False))
        if self.issuer_key_id is not None:
            values.append((self.issuer_key_id, False))
        if self.ocsp_url:
            access = x509.AccessDescription(
                AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(self.ocsp_url)
            )
            values.append((x509.AuthorityInformationAccess([access]), False))
        self._crl_points = [_encoded(_distribution_point(u), False) for u in self.crl_urls]
        # Constant extensions go to the builder pre-encoded (each value's own `public_bytes()`):
        # the certificate is byte-for-byte the same, and signing skips re-reading Python objects.
        self._constant = [_encoded(v, critical) for v, critical in values]

    @classmethod
    def for_issuer(
        cls,
        profile: Profile,
        issuer: x509.Certificate,
        *,
        ocsp_url: str | None = None,
        crl_urls: Sequence[str] = (),
    ) -> Template:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return cls(
            profile,
            issuer.subject,
            issuer.not_valid_after_utc,
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
            ocsp_url,
            tuple(crl_urls),
        )

    def builder(
        self,
        subject: x509.Name,
        public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
        serial: int,
        now: datetime,
        alt_names: Sequence[x509.GeneralName] = (),
        shard: int | None = None,
    ) -> x509.CertificateBuilder:
        """`shard`: the CRL partition whose distribution point the certificate names (None: none,
        for short-lived certificates that never enter a CRL). Linted before it is returned:
        PolicyError `certificate-lint` if the certificate would break RFC 5280."""
        ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
        extensions = [*self._constant, x509.Extension(ski.oid, False, ski)]
        if shard is not None and self._crl_points:
            extensions.append(self._crl_points[shard])
        if alt_names:
            # Critical only when the subject is empty (RFC 5280 4.2.1.6); our subjects never are.
            san = x509.SubjectAlternativeName(list(alt_names))
            extensions.append(x509.Extension(san.oid, False, san))
        not_before, not_after = now - CLOCK_SKEW, self.profile.not_after(now, self.issuer_not_after)
        check_fields(serial, not_before, not_after, subject)
        builder = x509.CertificateBuilder(
            issuer_name=self.issuer_name,
            subject_name=subject,
            public_key=public_key,
            serial_number=serial,
            not_valid_before=not_before,
            not_valid_after=not_after,
            extensions=extensions,
        )
        if not self._linted:
            # The template's first certificate is signed with a throw-away key and linted whole
            # (devid.pki.lint); what varies between certificates is checked above, every time.
            trial = builder.sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
            require_clean(trial, purpose_free=self.profile.purpose_free)
            self._linted = True
        return builder


def _distribution_point(uri: str) -> x509.CRLDistributionPoints:
    return x509.CRLDistributionPoints(
        [x509.DistributionPoint([x509.UniformResourceIdentifier(uri)], None, None, None)]
    )


def _encoded(value: x509.ExtensionType, critical: bool) -> x509.Extension[x509.ExtensionType]:
    return x509.Extension(value.oid, critical, x509.UnrecognizedExtension(value.oid, value.public_bytes()))


def self_signed_template(profile: Profile, subject: x509.Name) -> Template:
    return Template(profile, subject, None, None)


_SHORT_NAMES = {NameOID.COMMON_NAME: "CN", NameOID.ORGANIZATION_NAME: "O", NameOID.SERIAL_NUMBER: "2.5.4.5"}
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9._:@/-][A-Za-z0-9._:@/ -]*[A-Za-z0-9._:@/-]|[A-Za-z0-9._:@/-]")


def device_subject_text(org: str, device_serial: str, common_name: str | None = None) -> str:
    """`subject_text(device_subject(...))` without building the Name: the issuance hot path."""
    cn = common_name or device_serial
    if _PLAIN_VALUE.fullmatch(org) and _PLAIN_VALUE.fullmatch(cn) and _PLAIN_VALUE.fullmatch(device_serial):
        return f"2.5.4.5={device_serial},CN={cn},O={org}"
    return subject_text(device_subject(org, device_serial, common_name))


def subject_text(name: x509.Name) -> str:
    """RFC 4514 text of a subject for the store. Values of plain characters need no escaping and
    are formatted directly: `Name.rfc4514_string()` costs a tenth of a signature, per certificate."""
    parts = []
    for attr in reversed(list(name)):
        short = _SHORT_NAMES.get(attr.oid)
        value = attr.value
        if short and isinstance(value, str) and _PLAIN_VALUE.fullmatch(value):
            parts.append(f"{short}={value}")
        else:
            parts.append(attr.rfc4514_string())
    return ",".join(parts)
