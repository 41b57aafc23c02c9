"""C509 sizes for `devid bench c509`: each profile devid issues, issued by a real authority and
re-encoded as C509 type 3, beside its DER size (the ratio is the figure issue 12 sets at <= 55 %
for the LDevID); the EST cacerts chain as COSE_C509 beside PKCS#7; and the codec's speed beside
cryptography loading the same DER.

Two homes: one that names a public URL (so certificates carry AIA OCSP and a CRL distribution
point, as a deployment that serves status does) and one that does not.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from devid.authority.core import Authority
from devid.authority.requests import IssueRequest, NewDevice
from devid.authority.setup import init_home, open_authority
from devid.bench import Figure
from devid.pki import c509
from devid.pki.encoding import cert_der, certs_only
from devid.pki.profiles import ProfileName

PUBLIC_URL = "https://pki.example.net"
SPEED_ROUNDS = 2000


def _key() -> ec.EllipticCurvePublicKey:
    return ec.generate_private_key(ec.SECP256R1()).public_key()


def _issued(auth: Authority) -> dict[str, x509.Certificate]:
    """One certificate of every profile devid issues, through the authority."""

    def issue(request: IssueRequest) -> x509.Certificate:
        return auth.issue(request, "bench").certificate

    return {
        "idevid": issue(IssueRequest(ProfileName.IDEVID, _key(), new_device=NewDevice("BENCH-0001"))),
        "ldevid": issue(IssueRequest(ProfileName.LDEVID, _key(), device_serial="BENCH-0001")),
        "session": issue(
            IssueRequest(ProfileName.SESSION, _key(), device_serial="BENCH-0001", short_lived=True)
        ),
        "server": issue(IssueRequest(ProfileName.SERVER, _key(), dns=("est.example.net",))),
        "root-ca": auth.root,
        "intermediate-ca": auth.cas["operational"].certificate,
        "ocsp-signer": auth.cas["operational-ocsp"].certificate,
    }


def _profile_figures(
    auth: Authority, issued: dict[str, x509.Certificate], suffix: str, note: str
) -> list[Figure]:
    figures = []
    for name, cert in issued.items():
        der = cert_der(cert)
        encoded = c509.encode_certificate(der)
        figures.append(Figure(f"c509.{name}{suffix}", len(encoded), "bytes", len(der), "DER", note))
    chain = [*auth.chain("operational"), auth.root]
    figures.append(
        Figure(
            f"c509.cacerts_chain{suffix}",
            len(c509.encode_chain(chain)),
            "bytes",
            len(certs_only(chain)),
            "PKCS#7 certs-only (DER, before EST's base64)",
            "COSE_C509 usage=chain: operational CA + root",
        )
    )
    return figures


def _speed(der: bytes) -> Figure:
    encoded = c509.encode_certificate(der)
    start = time.perf_counter()
    for _ in range(SPEED_ROUNDS):
        x509.load_der_x509_certificate(der)
    baseline = SPEED_ROUNDS / (time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(SPEED_ROUNDS):
        c509.decode_certificate(encoded)
    ours = SPEED_ROUNDS / (time.perf_counter() - start)
    return Figure(
        "c509.decode_rate", ours, "certs/s", baseline, "cryptography load_der (Rust)", "LDevID, pure Python"
    )


def run() -> list[Figure]:
    passphrase = b"devid-bench-passphrase"
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="devid-bench-c509-") as tmp:
        for suffix, url, note in (
            ("", PUBLIC_URL, "with AIA OCSP + CRL distribution point"),
            (".no_status_urls", "", "no public URL: no AIA, no CRL distribution point"),
        ):
            home = init_home(
                Path(tmp) / f"home{suffix}", org="Bench Org", passphrase=passphrase, public_url=url
            )
            auth = open_authority(home, passphrase)
            try:
                issued = _issued(auth)
                figures += _profile_figures(auth, issued, suffix, note)
                if not suffix:
                    figures.append(_speed(cert_der(issued["ldevid"])))
            finally:
                auth.close()
    return figures
