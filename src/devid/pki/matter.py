"""Matter device attestation: the PAA, PAI and DAC profiles and a commissioner's checks of a chain.

The rules are those of the Matter Core Specification (6.2.2 certificate profiles, 6.2.3 the
attestation procedure) as the reference implementation applies them (connectedhomeip's
`VerifyAttestationCertificateFormat`, `ExtractVIDPIDFromX509Cert` and its default DAC verifier):

- every certificate: X.509 v3, ecdsa-with-SHA256, a P-256 key, a subject key identifier;
- basicConstraints and keyUsage present and critical; a DAC is no CA (no pathLen) and may only
  sign (digitalSignature, nothing else); a PAI is a CA with pathLen 0, a PAA a CA with pathLen 1
  or none, both with keyCertSign and cRLSign (and at most digitalSignature besides);
- an authority key identifier on the DAC and the PAI;
- Vendor ID (1.3.6.1.4.1.37244.2.1) and Product ID (1.3.6.1.4.1.37244.2.2) subject attributes,
  4 uppercase hex digits, or failing those the legacy `Mvid:XXXX` / `Mpid:XXXX` in the CN: a DAC
  has both, a PAI its VID (a PID when it serves one product line), a PAA no PID;
- the DAC's VID is the PAI's (and the PAA's, when the PAA names one); a PAI naming a PID gives
  it to the DAC; the device's reported VID/PID, when given, are the DAC's;
- the PAI's PAA is one the commissioner trusts (found by the PAI's authority key identifier);
- signatures DAC <- PAI <- PAA; the DAC valid at the time of the check, the PAI and the PAA valid
  when the DAC was issued (its notBefore: a device outlives the intermediates that made it).

The first rule a chain breaks is reported as an `AttestationError` naming the certificate and
the rule; its code is `matter-<certificate>-<rule>`, e.g. `matter-dac-key-usage-not-critical`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID, NameOID, SignatureAlgorithmOID

from devid.errors import PolicyError
from devid.pki.der import raw_extensions, read_tlv
from devid.pki.encoding import looks_like_pem, pem_blocks

VENDOR_ID_OID = x509.ObjectIdentifier("1.3.6.1.4.1.37244.2.1")
PRODUCT_ID_OID = x509.ObjectIdentifier("1.3.6.1.4.1.37244.2.2")
_HEX4 = re.compile(r"[0-9A-F]{4}")
#: The legacy encoding in the common name: `Mvid:FFF1`, `Mpid:8000` (uppercase hex only).
_CN_VID = re.compile(r"Mvid:([0-9A-F]{4})")
_CN_PID = re.compile(r"Mpid:([0-9A-F]{4})")
#: Matter 6.2.2: key identifiers are 20 octets (the SHA-1 of the public key, RFC 5280 method 1).
KEY_ID_LENGTH = 20


class Certificate(StrEnum):
    """Which certificate of the attestation chain a rule was checked on."""

    PAA = "paa"
    PAI = "pai"
    DAC = "dac"


class Rule(StrEnum):
    """The attestation rules; the error code is `matter-<certificate>-<rule>`."""

    UNREADABLE = "unreadable"
    VERSION = "version"
    SIGNATURE_ALGORITHM = "signature-algorithm"
    PUBLIC_KEY = "public-key"
    BASIC_CONSTRAINTS_MISSING = "basic-constraints-missing"
    BASIC_CONSTRAINTS_NOT_CRITICAL = "basic-constraints-not-critical"
    CA_FLAG = "ca-flag"
    PATH_LENGTH = "path-length"
    KEY_USAGE_MISSING = "key-usage-missing"
    KEY_USAGE_NOT_CRITICAL = "key-usage-not-critical"
    KEY_USAGE_BITS = "key-usage-bits"
    DUPLICATE_EXTENSION = "duplicate-extension"
    SKI_MISSING = "ski-missing"
    SKI_CRITICAL = "ski-critical"
    SKI_LENGTH = "ski-length"
    AKI_MISSING = "aki-missing"
    AKI_CRITICAL = "aki-critical"
    AKI_LENGTH = "aki-length"
    VID_ENCODING = "vid-encoding"
    PID_ENCODING = "pid-encoding"
    VID_MISSING = "vid-missing"
    PID_MISSING = "pid-missing"
    PID_PRESENT = "pid-present"
    VID_MISMATCH = "vid-mismatch"
    PID_MISMATCH = "pid-mismatch"
    REPORTED_VID_MISMATCH = "reported-vid-mismatch"
    REPORTED_PID_MISMATCH = "reported-pid-mismatch"
    UNTRUSTED = "untrusted"
    ISSUER_MISMATCH = "issuer-mismatch"
    SIGNATURE = "signature"
    NOT_YET_VALID = "not-yet-valid"
    EXPIRED = "expired"


class AttestationError(PolicyError):
    """A chain a commissioner must refuse: `certificate` broke `rule`."""

    def __init__(self, certificate: Certificate, rule: Rule, message: str) -> None:
        super().__init__(f"matter-{certificate.value}-{rule.value}", f"{certificate.name} {message}")
        self.certificate = certificate
        self.rule = rule


@dataclass(frozen=True)
class MatterProfile:
    """What the Matter Core Specification (6.2.2) allows of one certificate of the chain."""

    certificate: Certificate
    is_ca: bool
    #: The pathLen values allowed (None: absent).
    path_lengths: frozenset[int | None]
    #: keyUsage bits that must be set, and those that may be set besides.
    usage_required: frozenset[str]
    usage_allowed: frozenset[str]
    aki_required: bool
    vid_required: bool
    #: True: must name a PID; False: must not; None: may.
    pid: bool | None


_CA_USAGE = frozenset({"key_cert_sign", "crl_sign"})
_SIGNS = frozenset({"digital_signature"})
MATTER_PROFILES: dict[Certificate, MatterProfile] = {
    Certificate.PAA: MatterProfile(
        Certificate.PAA,
        is_ca=True,
        path_lengths=frozenset({None, 1}),
        usage_required=_CA_USAGE,
        usage_allowed=_SIGNS,
        aki_required=False,
        vid_required=False,
        pid=False,
    ),
    Certificate.PAI: MatterProfile(
        Certificate.PAI,
        is_ca=True,
        path_lengths=frozenset({0}),
        usage_required=_CA_USAGE,
        usage_allowed=_SIGNS,
        aki_required=True,
        vid_required=True,
        pid=None,
    ),
    Certificate.DAC: MatterProfile(
        Certificate.DAC,
        is_ca=False,
        path_lengths=frozenset({None}),
        usage_required=_SIGNS,
        usage_allowed=frozenset(),
        aki_required=True,
        vid_required=True,
        pid=True,
    ),
}


@dataclass(frozen=True)
class VidPid:
    """The Vendor and Product IDs a certificate's subject names (None: not named)."""

    vid: int | None
    pid: int | None


@dataclass(frozen=True)
class Attestation:
    """A chain that passed every rule: who made the device, and which trust anchor vouches."""

    vendor_id: int
    product_id: int
    dac_serial: int
    pai_subject: str
    paa_subject: str
    checked_at: datetime

    def as_dict(self) -> dict[str, str]:
        return {
            "verdict": "valid",
            "vendor_id": f"{self.vendor_id:04X}",
            "product_id": f"{self.product_id:04X}",
            "dac_serial": f"{self.dac_serial:x}",
            "pai": self.pai_subject,
            "paa": self.paa_subject,
            "checked_at": self.checked_at.isoformat(),
        }


def load_certificate(data: bytes, which: Certificate) -> x509.Certificate:
    """One PEM (strictly: nothing but the block) or DER certificate; AttestationError otherwise."""
    try:
        ders = [der for label, der in pem_blocks(data)] if looks_like_pem(data) else [data]
        if len(ders) != 1:
            raise ValueError(f"{len(ders)} PEM blocks where one certificate was expected")
        return x509.load_der_x509_certificate(ders[0])
    except x509.InvalidVersion as exc:  # cryptography refuses X.509 v2 as it reads the certificate
        raise AttestationError(which, Rule.VERSION, f"is X.509 v{exc.parsed_version + 1}, not v3") from None
    except ValueError as exc:  # PolicyError from the PEM reader included
        raise AttestationError(
            which, Rule.UNREADABLE, f"is not a PEM or DER X.509 certificate ({exc})"
        ) from None


def _hex_id(value: str, which: Certificate, rule: Rule, name: str) -> int:
    if not _HEX4.fullmatch(value):
        raise AttestationError(which, rule, f"{name} attribute {value!r} is not 4 uppercase hex digits")
    return int(value, 16)


def vid_pid(cert: x509.Certificate, which: Certificate) -> VidPid:
    """The VID/PID of the subject: the Matter attributes, else the CN's `Mvid:`/`Mpid:`."""
    vid = pid = cn_vid = cn_pid = None
    for attr in cert.subject:
        value = attr.value if isinstance(attr.value, str) else attr.value.decode("latin-1")
        if attr.oid == VENDOR_ID_OID:
            vid = _hex_id(value, which, Rule.VID_ENCODING, "Vendor ID")
        elif attr.oid == PRODUCT_ID_OID:
            pid = _hex_id(value, which, Rule.PID_ENCODING, "Product ID")
        elif attr.oid == NameOID.COMMON_NAME:
            if found := _CN_VID.search(value):
                cn_vid = int(found.group(1), 16)
            if found := _CN_PID.search(value):
                cn_pid = int(found.group(1), 16)
    return VidPid(vid if vid is not None else cn_vid, pid if pid is not None else cn_pid)


_BASIC_CONSTRAINTS = ExtensionOID.BASIC_CONSTRAINTS.dotted_string
_KEY_USAGE = ExtensionOID.KEY_USAGE.dotted_string
_SKI = ExtensionOID.SUBJECT_KEY_IDENTIFIER.dotted_string
_AKI = ExtensionOID.AUTHORITY_KEY_IDENTIFIER.dotted_string
_USAGE_BITS = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
)


@dataclass(frozen=True)
class _Extensions:
    """The extensions the profiles constrain, read from the DER (`cryptography` refuses to read the
    extensions of a certificate with cA=FALSE and a pathLen, a fault a verifier must name)."""

    basic_constraints: tuple[bool, bool, int | None] | None  # critical, cA, pathLen
    key_usage: tuple[bool, frozenset[str]] | None  # critical, the bits set
    ski: tuple[bool, bytes | None] | None  # critical, the key identifier
    aki: tuple[bool, bytes | None] | None  # critical, the keyIdentifier field

    @classmethod
    @functools.lru_cache(maxsize=64)  # a chain's certificates are read several times
    def of(cls, cert: x509.Certificate, which: Certificate) -> _Extensions:
        try:
            listed = raw_extensions(cert.tbs_certificate_bytes)
        except PolicyError as exc:
            raise AttestationError(which, Rule.UNREADABLE, f"extensions are not DER: {exc}") from None
        raw = dict(listed)
        for oid in (_BASIC_CONSTRAINTS, _KEY_USAGE, _SKI, _AKI):
            if sum(1 for found, _ in listed if found == oid) > 1:
                raise AttestationError(which, Rule.DUPLICATE_EXTENSION, f"has extension {oid} twice")
        basic, usage, ski, aki = (raw.get(oid) for oid in (_BASIC_CONSTRAINTS, _KEY_USAGE, _SKI, _AKI))
        try:
            return cls(
                None if basic is None else (basic.critical, *_basic_constraints(basic.value)),
                None if usage is None else (usage.critical, _key_usage(usage.value)),
                None if ski is None else (ski.critical, read_tlv(ski.value, 0, 0x04)[0]),
                None if aki is None else (aki.critical, _aki_key_id(aki.value)),
            )
        except PolicyError as exc:
            raise AttestationError(
                which, Rule.UNREADABLE, f"has an extension that is not DER: {exc}"
            ) from None

    @property
    def ski_id(self) -> bytes | None:
        return None if self.ski is None else self.ski[1]

    @property
    def aki_id(self) -> bytes | None:
        return None if self.aki is None else self.aki[1]


def _basic_constraints(value: bytes) -> tuple[bool, int | None]:
    body, _ = read_tlv(value, 0, 0x30)
    ca, path_length, pos = False, None, 0
    if pos < len(body) and body[pos] == 0x01:
        flag, pos = read_tlv(body, pos, 0x01)
        ca = flag != b"\x00"
    if pos < len(body):
        digits, pos = read_tlv(body, pos, 0x02)
        path_length = int.from_bytes(digits, "big", signed=True)
    return ca, path_length


def _key_usage(value: bytes) -> frozenset[str]:
    bits = read_tlv(value, 0, 0x03)[0][1:]  # after the unused-bits octet; bit 0 is the first MSB
    return frozenset(
        name for i, name in enumerate(_USAGE_BITS) if i // 8 < len(bits) and bits[i // 8] & (0x80 >> i % 8)
    )


def _aki_key_id(value: bytes) -> bytes | None:
    body, _ = read_tlv(value, 0, 0x30)
    return read_tlv(body, 0, 0x80)[0] if body[:1] == b"\x80" else None


def check_profile(cert: x509.Certificate, which: Certificate) -> VidPid:
    """The certificate against its Matter profile; returns its VID/PID."""
    rules = MATTER_PROFILES[which]
    if cert.version is not x509.Version.v3:
        raise AttestationError(which, Rule.VERSION, f"is X.509 {cert.version.name}, not v3")
    if cert.signature_algorithm_oid != SignatureAlgorithmOID.ECDSA_WITH_SHA256:
        name = getattr(cert.signature_algorithm_oid, "_name", cert.signature_algorithm_oid.dotted_string)
        raise AttestationError(
            which, Rule.SIGNATURE_ALGORITHM, f"is signed with {name}, not ecdsa-with-SHA256"
        )
    try:
        key = cert.public_key()
    except ValueError as exc:  # a curve OpenSSL cannot load
        raise AttestationError(which, Rule.PUBLIC_KEY, f"public key cannot be read ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        found = key.curve.name if isinstance(key, ec.EllipticCurvePublicKey) else type(key).__name__
        raise AttestationError(which, Rule.PUBLIC_KEY, f"public key is {found}, not EC P-256 (prime256v1)")
    ext = _Extensions.of(cert, which)
    _check_basic_constraints(ext, which, rules)
    _check_key_usage(ext, which, rules)
    ski_rules = (Rule.SKI_MISSING, Rule.SKI_CRITICAL, Rule.SKI_LENGTH)
    _check_key_id(ext.ski, which, "subjectKeyIdentifier", ski_rules, True)
    aki_rules = (Rule.AKI_MISSING, Rule.AKI_CRITICAL, Rule.AKI_LENGTH)
    _check_key_id(ext.aki, which, "authorityKeyIdentifier", aki_rules, rules.aki_required)
    ids = vid_pid(cert, which)
    if rules.vid_required and ids.vid is None:
        raise AttestationError(
            which, Rule.VID_MISSING, "subject names no Vendor ID (attribute or uppercase `Mvid:XXXX` in CN)"
        )
    if rules.pid is True and ids.pid is None:
        raise AttestationError(
            which, Rule.PID_MISSING, "subject names no Product ID (attribute or uppercase `Mpid:XXXX` in CN)"
        )
    if rules.pid is False and ids.pid is not None:
        raise AttestationError(
            which, Rule.PID_PRESENT, f"subject names Product ID {ids.pid:04X}; a PAA may not"
        )
    return ids


def _check_key_id(
    ext: tuple[bool, bytes | None] | None,
    which: Certificate,
    name: str,
    rules: tuple[Rule, Rule, Rule],
    required: bool,
) -> None:
    """Matter 6.2.2: SKI (and AKI) present where required, non-critical, a 20-octet identifier."""
    missing, critical, length = rules
    if ext is None:
        if required:
            raise AttestationError(which, missing, f"has no {name} extension")
        return
    if ext[0]:
        raise AttestationError(which, critical, f"{name} is marked critical")
    if ext[1] is None or len(ext[1]) != KEY_ID_LENGTH:
        found = "no key identifier" if ext[1] is None else f"{len(ext[1])} octets"
        raise AttestationError(which, length, f"{name} has {found}, not {KEY_ID_LENGTH}")


def _check_basic_constraints(ext: _Extensions, which: Certificate, rules: MatterProfile) -> None:
    if ext.basic_constraints is None:
        raise AttestationError(which, Rule.BASIC_CONSTRAINTS_MISSING, "has no basicConstraints extension")
    critical, ca, path_length = ext.basic_constraints
    if not critical:
        raise AttestationError(which, Rule.BASIC_CONSTRAINTS_NOT_CRITICAL, "basicConstraints is not critical")
    if ca != rules.is_ca:
        raise AttestationError(
            which, Rule.CA_FLAG, f"basicConstraints has cA={ca}; the profile needs cA={rules.is_ca}"
        )
    if path_length not in rules.path_lengths:
        allowed = " or ".join("absent" if n is None else str(n) for n in sorted(rules.path_lengths, key=str))
        found = "absent" if path_length is None else path_length
        raise AttestationError(
            which, Rule.PATH_LENGTH, f"basicConstraints pathLen is {found}, must be {allowed}"
        )


def _check_key_usage(ext: _Extensions, which: Certificate, rules: MatterProfile) -> None:
    if ext.key_usage is None:
        raise AttestationError(which, Rule.KEY_USAGE_MISSING, "has no keyUsage extension")
    critical, bits = ext.key_usage
    if not critical:
        raise AttestationError(which, Rule.KEY_USAGE_NOT_CRITICAL, "keyUsage is not critical")
    missing, extra = rules.usage_required - bits, bits - rules.usage_required - rules.usage_allowed
    if missing or extra:
        faults = [f"lacks {', '.join(sorted(missing))}"] if missing else []
        faults += [f"may not have {', '.join(sorted(extra))}"] if extra else []
        raise AttestationError(which, Rule.KEY_USAGE_BITS, f"keyUsage {sorted(bits)} {'; '.join(faults)}")


def _check_issued_by(cert: x509.Certificate, which: Certificate, issuer: x509.Certificate) -> None:
    aki = _Extensions.of(cert, which).aki_id
    if cert.issuer != issuer.subject or (aki is not None and aki != _Extensions.of(issuer, which).ski_id):
        raise AttestationError(
            which, Rule.ISSUER_MISMATCH, f"names issuer {subject_text(cert.issuer)!r}, not this chain's CA"
        )
    key = issuer.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)  # checked by the issuer's profile
    try:
        key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise AttestationError(
            which, Rule.SIGNATURE, "signature does not verify under its issuer's key"
        ) from None


def _check_validity(cert: x509.Certificate, which: Certificate, at: datetime, when: str) -> None:
    if at < cert.not_valid_before_utc:
        raise AttestationError(
            which,
            Rule.NOT_YET_VALID,
            f"is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S}Z ({when})",
        )
    if at > cert.not_valid_after_utc:
        raise AttestationError(
            which, Rule.EXPIRED, f"expired {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z ({when})"
        )


def find_paa(pai: x509.Certificate, trusted: Iterable[x509.Certificate]) -> x509.Certificate:
    """The trusted PAA whose subject key identifier is the PAI's authority key identifier."""
    aki = _Extensions.of(pai, Certificate.PAI).aki_id
    for paa in trusted:
        if aki is not None and _Extensions.of(paa, Certificate.PAA).ski_id == aki:
            return paa
    named = aki.hex(":").upper() if aki else "none"
    raise AttestationError(
        Certificate.PAA,
        Rule.UNTRUSTED,
        f"of this PAI ({subject_text(pai.issuer)!r}, key id {named}) is not a trusted PAA",
    )


def verify_attestation(
    dac: x509.Certificate,
    pai: x509.Certificate,
    trusted_paas: Sequence[x509.Certificate],
    at: datetime,
    *,
    reported_vid: int | None = None,
    reported_pid: int | None = None,
) -> Attestation:
    """A commissioner's checks of a DAC and its PAI against the trusted PAAs, in the order the
    reference verifier applies them; raises AttestationError naming the first rule broken.
    `reported_vid`/`reported_pid`: what the device says it is (its Basic Information cluster)."""
    dac_ids = check_profile(dac, Certificate.DAC)
    pai_ids = check_profile(pai, Certificate.PAI)
    assert dac_ids.vid is not None and dac_ids.pid is not None and pai_ids.vid is not None
    if dac_ids.vid != pai_ids.vid:
        raise AttestationError(
            Certificate.DAC,
            Rule.VID_MISMATCH,
            f"Vendor ID {dac_ids.vid:04X} differs from the PAI's {pai_ids.vid:04X}",
        )
    if pai_ids.pid is not None and dac_ids.pid != pai_ids.pid:
        raise AttestationError(
            Certificate.DAC,
            Rule.PID_MISMATCH,
            f"Product ID {dac_ids.pid:04X} differs from the PAI's {pai_ids.pid:04X}",
        )
    if reported_vid is not None and reported_vid != dac_ids.vid:
        raise AttestationError(
            Certificate.DAC,
            Rule.REPORTED_VID_MISMATCH,
            f"Vendor ID {dac_ids.vid:04X} differs from the {reported_vid:04X} the device reports",
        )
    if reported_pid is not None and reported_pid != dac_ids.pid:
        raise AttestationError(
            Certificate.DAC,
            Rule.REPORTED_PID_MISMATCH,
            f"Product ID {dac_ids.pid:04X} differs from the {reported_pid:04X} the device reports",
        )
    paa = find_paa(pai, trusted_paas)
    paa_ids = check_profile(paa, Certificate.PAA)
    if paa_ids.vid is not None and paa_ids.vid != pai_ids.vid:
        raise AttestationError(
            Certificate.PAI,
            Rule.VID_MISMATCH,
            f"Vendor ID {pai_ids.vid:04X} differs from the PAA's {paa_ids.vid:04X}",
        )
    _check_issued_by(dac, Certificate.DAC, pai)
    _check_issued_by(pai, Certificate.PAI, paa)
    at = at.astimezone(UTC)
    _check_validity(dac, Certificate.DAC, at, "at the time of the check")
    issued = dac.not_valid_before_utc
    _check_validity(pai, Certificate.PAI, issued, "when the DAC was issued")
    _check_validity(paa, Certificate.PAA, issued, "when the DAC was issued")
    return Attestation(
        dac_ids.vid,
        dac_ids.pid,
        dac.serial_number,
        subject_text(pai.subject),
        subject_text(paa.subject),
        at,
    )


def subject_text(name: x509.Name) -> str:
    """RFC 4514 text of a name, with the Matter attributes called `VID` and `PID`."""
    return name.rfc4514_string({VENDOR_ID_OID: "VID", PRODUCT_ID_OID: "PID"})


def matter_subject(common_name: str, vid: int, pid: int | None = None) -> x509.Name:
    """A Matter subject: the CN, then the Vendor ID and (for a DAC or product PAI) the Product ID."""
    attrs = [
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        x509.NameAttribute(VENDOR_ID_OID, f"{vid:04X}"),
    ]
    if pid is not None:
        attrs.append(x509.NameAttribute(PRODUCT_ID_OID, f"{pid:04X}"))
    return x509.Name(attrs)


def parse_id(text: str, name: str) -> int:
    """A VID or PID as a user types it (`FFF1`, `fff1`, `0xFFF1`): 16 bits, PolicyError otherwise."""
    digits = text.strip().removeprefix("0x").removeprefix("0X")
    if not re.fullmatch(r"[0-9A-Fa-f]{1,4}", digits):
        raise PolicyError(
            f"matter-bad-{name.lower()}", f"{name} {text!r} is not a 16-bit hex number such as FFF1"
        )
    return int(digits, 16)
