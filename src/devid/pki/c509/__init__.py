"""C509 certificates (draft-ietf-cose-cbor-encoded-cert): type 3, the CBOR re-encoding of a DER
X.509 certificate that decodes back to the very same DER, so the CA's signature still verifies.

devid signs X.509 only; C509 is an encoding of what it issued (for constrained links), never a
second thing that is signed. Pure: no I/O.

API:
- `encode_certificate(cert)` -> C509Certificate bytes (`application/cose-c509-cert+cbor`).
- `decode_certificate(data)` -> the DER bytes; `load_certificate(data)` -> `x509.Certificate`.
- `diagnostic(data)` -> the C509Certificate in CBOR diagnostic notation.
- `encode_chain(certs)` / `decode_chain(data)`: COSE_C509 (`application/cose-c509+cbor`,
  with `; usage=chain` for an ordered chain): one C509CertData (a byte string wrapping one
  C509Certificate) or an array of two or more.
Errors: C509Malformed (bad input to decode), C509Unsupported (nothing C509 can carry exactly).
"""

from __future__ import annotations

from collections.abc import Sequence

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from devid.errors import C509Malformed
from devid.pki.c509 import cert as _cert
from devid.pki.c509.diag import diagnostic as diagnostic

#: Media type of one C509Certificate.
MEDIA_TYPE_CERT = "application/cose-c509-cert+cbor"
#: Media type of COSE_C509 (a bag); with `usage=chain`, an ordered chain, leaf first.
MEDIA_TYPE_COSE_C509 = "application/cose-c509+cbor"
MEDIA_TYPE_CHAIN = "application/cose-c509+cbor; usage=chain"
#: CoAP Content-Formats. The draft still says TBD21 / TBD3 / TBD15 (IANA has not assigned them),
#: so devid uses 65000 + the TBD number, in the Experimental Use range (65000-65535, RFC 7252
#: 12.3), until IANA does: change them here, nowhere else.
CONTENT_FORMAT_CERT = 65021
CONTENT_FORMAT_COSE_C509 = 65003
CONTENT_FORMAT_CHAIN = 65015
TYPE_REENCODED = _cert.TYPE_REENCODED


def _der(cert: x509.Certificate | bytes) -> bytes:
    return cert if isinstance(cert, bytes) else cert.public_bytes(Encoding.DER)


def encode_certificate(cert: x509.Certificate | bytes) -> bytes:
    """C509Certificate (type 3) of a certificate or its DER; C509Unsupported if it cannot be
    carried byte for byte."""
    return _cert.encode(_der(cert))


def decode_certificate(data: bytes) -> bytes:
    """The DER X.509 certificate of a C509 type 3 certificate; C509Malformed / C509Unsupported."""
    return _cert.decode(data)


def load_certificate(data: bytes) -> x509.Certificate:
    der = decode_certificate(data)
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise C509Malformed("certificate", f"decodes to an invalid X.509 certificate: {exc}") from None


def encode_chain(certs: Sequence[x509.Certificate | bytes]) -> bytes:
    """COSE_C509 of one or more certificates (in the given order)."""
    if not certs:
        raise ValueError("a COSE_C509 holds at least one certificate")
    wrapped = [encode_certificate(c) for c in certs]
    return cbor2.dumps(wrapped[0] if len(wrapped) == 1 else wrapped)


def decode_chain(data: bytes) -> list[bytes]:
    """The DER certificates of a COSE_C509, in order."""
    item = _cert.one_item(data, "COSE_C509")
    items = item if isinstance(item, list) and len(item) >= 2 else [item]
    certificates = [i for i in items if isinstance(i, bytes)]
    if len(certificates) != len(items):
        raise C509Malformed("COSE_C509", "expected C509CertData (a byte string) or an array of two or more")
    return [decode_certificate(i) for i in certificates]
