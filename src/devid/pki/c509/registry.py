"""The integers of the draft's IANA registries that devid's certificates (and the draft's examples)
use; everything else travels in the generic OID form. Source: draft-ietf-cose-cbor-encoded-cert,
section "IANA Considerations" (C509 Signature Algorithms, Public Key Algorithms, RDN Attributes,
Extensions, Extended Key Usages, Information Access, General Names).
"""

from __future__ import annotations

from enum import Enum

#: Signature algorithm value -> DER AlgorithmIdentifier. ECDSA ones carry r||s, not DER, in C509.
SIGNATURE_ALGORITHMS: dict[int, bytes] = {
    -256: bytes.fromhex("300d06092a864886f70d0101050500"),
    -255: bytes.fromhex("300906072a8648ce3d0401"),
    0: bytes.fromhex("300a06082a8648ce3d040302"),
    1: bytes.fromhex("300a06082a8648ce3d040303"),
    2: bytes.fromhex("300a06082a8648ce3d040304"),
    12: bytes.fromhex("300506032b6570"),
    13: bytes.fromhex("300506032b6571"),
    23: bytes.fromhex("300d06092a864886f70d01010b0500"),
    24: bytes.fromhex("300d06092a864886f70d01010c0500"),
    25: bytes.fromhex("300d06092a864886f70d01010d0500"),
}
ECDSA_SIGNATURES = frozenset({-255, 0, 1, 2})

#: Public key algorithm value -> DER AlgorithmIdentifier.
PUBLIC_KEY_ALGORITHMS: dict[int, bytes] = {
    0: bytes.fromhex("300d06092a864886f70d0101010500"),
    1: bytes.fromhex("301306072a8648ce3d020106082a8648ce3d030107"),
    2: bytes.fromhex("301006072a8648ce3d020106052b81040022"),
    3: bytes.fromhex("301006072a8648ce3d020106052b81040023"),
    8: bytes.fromhex("300506032b656e"),
    9: bytes.fromhex("300506032b656f"),
    12: bytes.fromhex("300506032b6570"),
    13: bytes.fromhex("300506032b6571"),
}
RSA_KEY = 0
#: Weierstrass curves whose points C509 compresses.
EC_KEYS = frozenset({1, 2, 3})

#: RDN attribute value -> OID (dotted). Values 0 (emailAddress) and 22 (domainComponent) are IA5String.
ATTRIBUTES: dict[int, str] = {
    0: "1.2.840.113549.1.9.1",
    1: "2.5.4.3",
    2: "2.5.4.4",
    3: "2.5.4.5",
    4: "2.5.4.6",
    5: "2.5.4.7",
    6: "2.5.4.8",
    7: "2.5.4.9",
    8: "2.5.4.10",
    9: "2.5.4.11",
    10: "2.5.4.12",
    11: "2.5.4.15",
    12: "2.5.4.17",
    13: "2.5.4.42",
    14: "2.5.4.43",
    15: "2.5.4.44",
    16: "2.5.4.46",
    17: "2.5.4.65",
    18: "2.5.4.97",
    19: "1.3.6.1.4.1.311.60.2.1.1",
    20: "1.3.6.1.4.1.311.60.2.1.2",
    21: "1.3.6.1.4.1.311.60.2.1.3",
    22: "0.9.2342.19200300.100.1.25",
    25: "2.5.4.41",
    26: "2.5.4.20",
    27: "2.5.4.54",
    28: "0.9.2342.19200300.100.1.1",
    29: "1.2.840.113549.1.9.2",
    30: "1.2.840.113549.1.9.8",
}
IA5_ATTRIBUTES = frozenset({0, 22})
COMMON_NAME = 1


class Ext(int, Enum):
    """C509 Extensions registry values this codec encodes specifically."""

    SUBJECT_KEY_ID = 1
    KEY_USAGE = 2
    SUBJECT_ALT_NAME = 3
    BASIC_CONSTRAINTS = 4
    CRL_DISTRIBUTION_POINTS = 5
    CERTIFICATE_POLICIES = 6
    AUTHORITY_KEY_ID = 7
    EXT_KEY_USAGE = 8
    AUTHORITY_INFO_ACCESS = 9
    ISSUER_ALT_NAME = 25
    FRESHEST_CRL = 29
    INHIBIT_ANY_POLICY = 30
    SUBJECT_INFO_ACCESS = 31
    OCSP_NO_CHECK = 36


EXTENSION_OIDS: dict[Ext, str] = {
    Ext.SUBJECT_KEY_ID: "2.5.29.14",
    Ext.KEY_USAGE: "2.5.29.15",
    Ext.SUBJECT_ALT_NAME: "2.5.29.17",
    Ext.BASIC_CONSTRAINTS: "2.5.29.19",
    Ext.CRL_DISTRIBUTION_POINTS: "2.5.29.31",
    Ext.CERTIFICATE_POLICIES: "2.5.29.32",
    Ext.AUTHORITY_KEY_ID: "2.5.29.35",
    Ext.EXT_KEY_USAGE: "2.5.29.37",
    Ext.AUTHORITY_INFO_ACCESS: "1.3.6.1.5.5.7.1.1",
    Ext.ISSUER_ALT_NAME: "2.5.29.18",
    Ext.FRESHEST_CRL: "2.5.29.46",
    Ext.INHIBIT_ANY_POLICY: "2.5.29.54",
    Ext.SUBJECT_INFO_ACCESS: "1.3.6.1.5.5.7.1.11",
    Ext.OCSP_NO_CHECK: "1.3.6.1.5.5.7.48.1.5",
}

EXTENDED_KEY_USAGES: dict[int, str] = {
    0: "2.5.29.37.0",
    1: "1.3.6.1.5.5.7.3.1",
    2: "1.3.6.1.5.5.7.3.2",
    3: "1.3.6.1.5.5.7.3.3",
    4: "1.3.6.1.5.5.7.3.4",
    8: "1.3.6.1.5.5.7.3.8",
    9: "1.3.6.1.5.5.7.3.9",
    10: "1.3.6.1.5.2.3.4",
    11: "1.3.6.1.5.2.3.5",
    12: "1.3.6.1.5.5.7.3.21",
    13: "1.3.6.1.5.5.7.3.22",
    14: "1.3.6.1.5.5.7.3.35",
    15: "1.3.6.1.5.5.7.3.27",
    16: "1.3.6.1.5.5.7.3.28",
    17: "1.3.6.1.5.5.7.3.29",
    18: "1.3.6.1.5.5.7.3.32",
    20: "1.3.6.1.4.1.45605.1",
}

CERTIFICATE_POLICIES: dict[int, str] = {
    0: "2.5.29.32.0",
    1: "2.23.140.1.2.1",
    2: "2.23.140.1.2.2",
    3: "2.23.140.1.2.3",
    4: "2.23.140.1.1",
    7: "1.3.6.1.5.5.7.14.2",
    8: "1.3.6.1.5.5.7.14.3",
    24: "2.23.146.1.2.1.0",
    25: "2.23.146.1.2.1.1",
    26: "2.23.146.1.2.1.0.0.0.0.0",
    27: "2.23.146.1.2.1.2",
    28: "2.23.146.1.2.1.0.0.0",
    29: "2.23.146.1.2.1.3",
    30: "2.23.146.1.2.1.0.0.1.0",
    31: "2.23.146.1.2.1.4",
    32: "2.23.146.1.2.1.0.0.1.1",
    33: "2.23.146.1.2.1.5",
    34: "2.23.146.1.2.1.0.0.1.2",
    35: "2.23.146.1.2.1.6",
    36: "2.23.146.1.2.1.0.0.2.0",
    37: "2.23.146.1.2.1.7",
    38: "2.23.146.1.2.1.0.0.2.1",
}
#: Policy qualifiers: CPS pointer (IA5String URI) and user notice (explicitText as UTF8String).
CPS_QUALIFIER, USER_NOTICE_QUALIFIER = 1, 2
POLICY_QUALIFIERS: dict[int, str] = {
    CPS_QUALIFIER: "1.3.6.1.5.5.7.2.1",
    USER_NOTICE_QUALIFIER: "1.3.6.1.5.5.7.2.2",
}

INFORMATION_ACCESS: dict[int, str] = {
    1: "1.3.6.1.5.5.7.48.1",
    2: "1.3.6.1.5.5.7.48.2",
    3: "1.3.6.1.5.5.7.48.3",
    5: "1.3.6.1.5.5.7.48.5",
    10: "1.3.6.1.5.5.7.48.10",
    11: "1.3.6.1.5.5.7.48.11",
    13: "1.3.6.1.5.5.7.48.13",
}

#: C509 General Names: the otherName forms with their own (negative) values, by type-id.
OTHER_NAMES: dict[int, str] = {
    -3: "1.3.6.1.5.5.7.8.12",  # MACAddress: bytes
    -2: "1.3.6.1.5.5.7.8.9",  # SmtpUTF8Mailbox: text
    -1: "1.3.6.1.5.5.7.8.4",  # hardwareModuleName: [~oid, bytes]
}
