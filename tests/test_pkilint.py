"""pkilint over everything devid signs: every certificate profile, every CRL kind, OCSP responses.

The validators are the ones `lint_pkix_cert`, `lint_crl -t CRL -p PKIX` and `lint_ocsp_response`
build, run in-process (each CLI start costs 1.5 s). No finding at WARNING or above is allowed,
except the reasoned ones in EXCEPTIONS (also in docs/threat-model.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from pkilint import loader, pkix
from pkilint.pkix import certificate, crl, extension, name
from pkilint.pkix import ocsp as pkilint_ocsp
from pkilint.validation import ValidationFindingSeverity

from devid.authority.core import Authority
from devid.authority.requests import IssueRequest, NewDevice
from devid.authority.revocation import RevokeRequest, Selector, revoke, unrevoke
from devid.authority.setup import init_home, open_authority
from devid.authority.status_signing import responder
from devid.clock import FixedClock
from devid.errors import PolicyError
from devid.pki import lint, profiles
from devid.pki.profiles import ProfileName
from devid.pki.reasons import Reason
from devid.pki.serials import serial_hex
from devid.publish.service import status_service
from devid.revocation import crl as devid_crl

PASSPHRASE = b"correct horse battery staple"
DER = serialization.Encoding.DER
#: (artefact kind, pkilint finding code) -> why devid keeps it. Empty: every artefact is clean.
EXCEPTIONS: dict[tuple[str, str], str] = {}

_CERT = certificate.create_pkix_certificate_validator_container(
    certificate.create_decoding_validators(name.ATTRIBUTE_TYPE_MAPPINGS, extension.EXTENSION_MAPPINGS),
    [
        certificate.create_issuer_validator_container([]),
        certificate.create_validity_validator_container(),
        certificate.create_subject_validator_container([]),
        certificate.create_extensions_validator_container([]),
        certificate.create_spki_validator_container([]),
    ],
)
_CRL = crl.create_pkix_crl_validator_container(
    [
        pkix.create_attribute_decoder(name.ATTRIBUTE_TYPE_MAPPINGS),
        pkix.create_extension_decoder(extension.EXTENSION_MAPPINGS),
    ],
    [
        crl.create_issuer_validator_container([]),
        crl.create_validity_validator_container([]),
        crl.create_extensions_validator_container([]),
    ],
)
_OCSP = pkilint_ocsp.create_pkix_ocsp_response_validator_container(
    [
        pkilint_ocsp.create_response_decoder(),
        pkix.create_attribute_decoder(name.ATTRIBUTE_TYPE_MAPPINGS),
        pkix.create_extension_decoder(extension.EXTENSION_MAPPINGS),
    ],
    [],
)
_LINTERS: dict[str, tuple[Any, Any]] = {
    "cert": (_CERT, loader.RFC5280CertificateDocumentLoader()),
    "crl": (_CRL, loader.RFC5280CertificateListDocumentLoader()),
    "ocsp": (_OCSP, loader.RFC6960OCSPResponseDocumentLoader()),
}


def findings(kind: str, der: bytes) -> list[tuple[str, str, str]]:
    """(severity, code, node path) of each pkilint finding at WARNING or above."""
    validator, doc_loader = _LINTERS[kind]
    results = validator.validate(doc_loader.load_der_document(der, kind).root)
    return [
        (f.finding.severity.name, f.finding.code, r.node.path)
        for r in results
        for f in r.finding_descriptions
        if f.finding.severity <= ValidationFindingSeverity.WARNING
    ]


def _key() -> ec.EllipticCurvePublicKey:
    return ec.generate_private_key(ec.SECP256R1()).public_key()


def _ocsp_request(ca: x509.Certificate, *certs: x509.Certificate, nonce: bytes | None = None) -> bytes:
    """One request for `certs` (cryptography writes one CertID a request; asn1crypto joins them)."""
    singles = []
    for cert in certs:
        builder = ocsp.OCSPRequestBuilder().add_certificate(cert, ca, hashes.SHA1())
        if nonce is not None:
            builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
        singles.append(asn1_ocsp.OCSPRequest.load(builder.build().public_bytes(DER)))
    joined = singles[0]
    joined["tbs_request"]["request_list"] = [s["tbs_request"]["request_list"][0] for s in singles]
    return bytes(joined.dump(force=True))


def _artefacts(auth: Authority, clock: FixedClock, public: bool) -> Iterator[tuple[str, str, bytes]]:
    """(kind, label, DER) of every profile, CRL kind and OCSP response an authority produces."""
    for ca_name, ca in auth.cas.items():
        yield "cert", f"ca {ca_name} ({ca.role})", ca.certificate.public_bytes(DER)
    idevid = auth.issue(IssueRequest(ProfileName.IDEVID, _key(), new_device=NewDevice("D1", lot="L1")))
    auth.issue(IssueRequest(ProfileName.IDEVID, _key(), new_device=NewDevice("D2", lot="L1")))
    ldevid = auth.issue(IssueRequest(ProfileName.LDEVID, _key(), device_serial="D1"))
    held = auth.issue(IssueRequest(ProfileName.LDEVID, _key(), device_serial="D2"))
    issued = {
        "idevid": idevid,
        "ldevid": ldevid,
        "ldevid short-lived": auth.issue(
            IssueRequest(ProfileName.LDEVID, _key(), device_serial="D1", short_lived=True)
        ),
        "session": auth.issue(IssueRequest(ProfileName.SESSION, _key(), device_serial="D1")),
        "server": auth.issue(
            IssueRequest(ProfileName.SERVER, _key(), dns=("devid.example.com",), ips=("127.0.0.1", "::1"))
        ),
    }
    for label, cert in issued.items():
        yield "cert", label, cert.der
    # Full and delta CRLs, empty and with entries of several reasons, removeFromCRL included.
    for ca_name in ("manufacturing", "operational"):
        yield "crl", f"full {ca_name}, empty", devid_crl.build(auth, ca_name).der
    revoke(auth, RevokeRequest(Selector.SERIAL, serial_hex(ldevid.serial), Reason.KEY_COMPROMISE), "t")
    revoke(auth, RevokeRequest(Selector.SERIAL, serial_hex(held.serial), Reason.CERTIFICATE_HOLD), "t")
    third = auth.issue(IssueRequest(ProfileName.IDEVID, _key(), new_device=NewDevice("D3", lot="L1")))
    revoke(auth, RevokeRequest(Selector.SERIAL, serial_hex(third.serial), Reason.UNSPECIFIED), "t")
    for ca_name in ("manufacturing", "operational"):
        yield "crl", f"delta {ca_name}", devid_crl.build(auth, ca_name, delta=True).der
        yield "crl", f"full {ca_name}", devid_crl.build(auth, ca_name).der
        if public:
            shard = held.serial % auth.cas[ca_name].crl_shards
            yield "crl", f"shard {ca_name}", devid_crl.build(auth, ca_name, shard=shard).der
            yield "crl", f"shard delta {ca_name}", devid_crl.build(auth, ca_name, shard=shard, delta=True).der
    unrevoke(auth, Selector.SERIAL, serial_hex(held.serial), "t")
    # The root's CRL (an ARL: it lists intermediates), full and delta.
    yield "crl", "full root", devid_crl.build(auth, "root").der
    yield "crl", "delta root", devid_crl.build(auth, "root", delta=True).der
    yield "crl", "delta with removeFromCRL", devid_crl.build(auth, "operational", delta=True).der
    # OCSP: good, revoked, unknown; one and several CertIDs; pre-signed and with a nonce.
    ca = auth.cas["operational"].certificate
    stranger = auth.issue(IssueRequest(ProfileName.SERVER, _key(), dns=("x.example",))).certificate
    key_bits = ca.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    never_issued = (
        ocsp.OCSPRequestBuilder()
        .add_certificate_by_hash(
            hashlib.sha1(ca.subject.public_bytes()).digest(),
            hashlib.sha1(key_bits).digest(),
            4242,
            hashes.SHA1(),
        )
        .build()
        .public_bytes(DER)
    )
    respond = status_service(auth).responder.respond

    def answer(request: bytes, *expected: ocsp.OCSPCertStatus) -> bytes:
        """The responder's answer, checked to be the successful one with `expected` statuses."""
        der = respond(request).der
        parsed = ocsp.load_der_ocsp_response(der)
        assert parsed.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
        assert [single.certificate_status for single in parsed.responses] == list(expected)
        return der

    good, revoked = ocsp.OCSPCertStatus.GOOD, ocsp.OCSPCertStatus.REVOKED
    yield "ocsp", "good", answer(_ocsp_request(ca, issued["server"].certificate), good)
    yield "ocsp", "revoked", answer(_ocsp_request(ca, ldevid.certificate), revoked)
    yield "ocsp", "unknown", answer(never_issued, ocsp.OCSPCertStatus.UNKNOWN)
    yield "ocsp", "good, with nonce", answer(_ocsp_request(ca, stranger, nonce=b"n" * 16), good)
    multi = _ocsp_request(ca, ldevid.certificate, issued["server"].certificate)
    yield "ocsp", "multi", answer(multi, revoked, good)
    # A delegated responder renewed after two thirds of its life: issued at runtime, not at init.
    clock.advance(timedelta(days=61))
    renewed = responder(auth, "operational").certificate
    assert renewed != auth.cas["operational-ocsp"].certificate
    yield "cert", "ocsp signer (renewed)", renewed.public_bytes(DER)


@pytest.fixture(scope="module", params=[False, True], ids=["no-public-url", "public-url"])
def artefacts(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> list[tuple[str, str, bytes]]:
    """Everything one authority signs; with a public URL its certificates carry AIA and CRL
    distribution points, and shard CRLs exist."""
    public: bool = request.param
    home = init_home(
        tmp_path_factory.mktemp("pkilint") / "home",
        org="Lint Org",
        passphrase=PASSPHRASE,
        public_url="http://127.0.0.1:8080/" if public else None,
    )
    clock = FixedClock(datetime.now(UTC).replace(microsecond=0))
    with open_authority(home, PASSPHRASE, clock=clock) as auth:
        return list(_artefacts(auth, clock, public))


def test_pkilint_finds_nothing_at_warning_or_above(artefacts: list[tuple[str, str, bytes]]) -> None:
    kinds = {kind for kind, _, _ in artefacts}
    assert kinds == {"cert", "crl", "ocsp"} and len(artefacts) >= 25
    found = {
        label: [f for f in findings(kind, der) if (kind, f[1]) not in EXCEPTIONS]
        for kind, label, der in artefacts
    }
    assert {label: f for label, f in found.items() if f} == {}


def test_devid_lint_agrees_on_every_certificate(artefacts: list[tuple[str, str, bytes]]) -> None:
    """The in-line pre-issuance rules pass what pkilint passes (they run on the same certificates)."""
    certs = [x509.load_der_x509_certificate(der) for kind, _, der in artefacts if kind == "cert"]
    assert [lint.problems(cert) for cert in certs] == [[] for _ in certs]


def _defective(change: Callable[[x509.CertificateBuilder], x509.CertificateBuilder]) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "bad")])
    now = datetime.now(UTC)
    builder = x509.CertificateBuilder(
        issuer_name=subject,
        subject_name=subject,
        public_key=key.public_key(),
        serial_number=7,
        not_valid_before=now,
        not_valid_after=now + timedelta(days=1),
    )
    return change(builder).sign(key, hashes.SHA256())


def test_a_defective_certificate_is_caught_by_both_linters() -> None:
    """A CA certificate whose basicConstraints is not critical and that has no keyUsage."""
    cert = _defective(
        lambda b: b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=False)
    )
    codes = {code for _, code, _ in findings("cert", cert.public_bytes(DER))}
    assert "pkix.basic_constraints_extension_not_critical" in codes
    assert "basicConstraints missing or not critical (4.2.1.9)" in lint.problems(cert)
    assert "keyUsage missing or not critical (4.2.1.3)" in lint.problems(cert)


def test_the_in_line_lint_refuses_before_the_ca_key_signs() -> None:
    """What `Template.builder` refuses: a profile that would make a defective certificate (checked on
    its first certificate, signed with a throw-away key), and bad per-certificate fields."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    root = profiles.PROFILES[ProfileName.ROOT_CA]
    subject = profiles.ca_subject("Org", "Root")
    now = datetime.now(UTC)
    ca = profiles.self_signed_template(root, subject).builder(subject, ca_key.public_key(), 5, now)
    issuer = ca.sign(ca_key, hashes.SHA256())
    leaf = profiles.PROFILES[ProfileName.LDEVID]
    device = profiles.device_subject("Org", "D1")

    def refusal(profile: profiles.Profile, serial: int = 9, name: x509.Name = device) -> str:
        with pytest.raises(PolicyError) as refused:
            profiles.Template.for_issuer(profile, issuer).builder(name, _key(), serial, now)
        assert refused.value.code == "certificate-lint"
        return refused.value.message

    signing_leaf = replace(leaf, key_usage=root.key_usage)
    assert "keyCertSign set exactly when the certificate is a CA" in refusal(signing_leaf)
    assert "without extendedKeyUsage" in refusal(replace(leaf, extended_key_usage=()))
    assert "20 octets" in refusal(leaf, serial=1 << 160)
    assert "empty subject" in refusal(leaf, name=x509.Name([]))
    assert "notBefore must precede notAfter" in refusal(leaf.with_validity(timedelta(minutes=-10)))
