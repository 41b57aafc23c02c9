"""RFC 5280 CRLReason codes (5.3.1), as the CLI, the API, CRLs and OCSP name them."""

from __future__ import annotations

from enum import IntEnum

from cryptography import x509

from devid.errors import PolicyError


class Reason(IntEnum):
    """The CRLReason of a revocation; its value is the code stored and encoded (7 is unused)."""

    UNSPECIFIED = 0
    KEY_COMPROMISE = 1
    CA_COMPROMISE = 2
    AFFILIATION_CHANGED = 3
    SUPERSEDED = 4
    CESSATION_OF_OPERATION = 5
    CERTIFICATE_HOLD = 6
    REMOVE_FROM_CRL = 8
    PRIVILEGE_WITHDRAWN = 9
    AA_COMPROMISE = 10

    @property
    def rfc_name(self) -> str:
        """The name RFC 5280 gives it (`keyCompromise`), which is what people type."""
        return _RFC_NAMES[self]

    @property
    def flag(self) -> x509.ReasonFlags:
        return _FLAGS[self]

    @classmethod
    def from_flag(cls, flag: x509.ReasonFlags) -> Reason:
        return next(reason for reason, f in _FLAGS.items() if f is flag)

    @classmethod
    def parse(cls, text: str) -> Reason:
        """A reason named as in RFC 5280 (`keyCompromise`), case-insensitively, or by its code.
        `removeFromCRL` is not a reason to revoke (it only lifts a hold in a delta CRL)."""
        wanted = text.strip().lower().replace("-", "").replace("_", "")
        for reason in cls:
            if wanted in (reason.rfc_name.lower(), str(reason.value)) and reason is not cls.REMOVE_FROM_CRL:
                return reason
        known = ", ".join(r.rfc_name for r in cls if r is not cls.REMOVE_FROM_CRL)
        raise PolicyError("revocation-reason", f"unknown revocation reason {text!r}; known: {known}")


_RFC_NAMES = {
    Reason.UNSPECIFIED: "unspecified",
    Reason.KEY_COMPROMISE: "keyCompromise",
    Reason.CA_COMPROMISE: "cACompromise",
    Reason.AFFILIATION_CHANGED: "affiliationChanged",
    Reason.SUPERSEDED: "superseded",
    Reason.CESSATION_OF_OPERATION: "cessationOfOperation",
    Reason.CERTIFICATE_HOLD: "certificateHold",
    Reason.REMOVE_FROM_CRL: "removeFromCRL",
    Reason.PRIVILEGE_WITHDRAWN: "privilegeWithdrawn",
    Reason.AA_COMPROMISE: "aACompromise",
}
_FLAGS = {
    Reason.UNSPECIFIED: x509.ReasonFlags.unspecified,
    Reason.KEY_COMPROMISE: x509.ReasonFlags.key_compromise,
    Reason.CA_COMPROMISE: x509.ReasonFlags.ca_compromise,
    Reason.AFFILIATION_CHANGED: x509.ReasonFlags.affiliation_changed,
    Reason.SUPERSEDED: x509.ReasonFlags.superseded,
    Reason.CESSATION_OF_OPERATION: x509.ReasonFlags.cessation_of_operation,
    Reason.CERTIFICATE_HOLD: x509.ReasonFlags.certificate_hold,
    Reason.REMOVE_FROM_CRL: x509.ReasonFlags.remove_from_crl,
    Reason.PRIVILEGE_WITHDRAWN: x509.ReasonFlags.privilege_withdrawn,
    Reason.AA_COMPROMISE: x509.ReasonFlags.aa_compromise,
}
