"""Everything a server process publishes about status, assembled once per process: the OCSP
responder and the compact (COSE) status responder (both signing with each issuing CA's delegated
responder, over one status source) and the CRL, filter and allowlist
files, as aiohttp routes for the TLS server and as one handler for the plain-HTTP port."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from devid.authority.core import Authority
from devid.authority.status_signing import responder
from devid.publish.ocsp import OcspHttp
from devid.publish.plain_http import Handler, dispatch
from devid.publish.routes import status_routes
from devid.publish.status_files import StatusFiles
from devid.revocation.cose_responder import CoseStatusResponder
from devid.revocation.ocsp import OcspIssuer, OcspResponder
from devid.revocation.records import StoreStatus


@dataclass(frozen=True)
class StatusService:
    files: StatusFiles
    responder: OcspResponder
    ocsp: OcspHttp
    #: Compact status (COSE_Sign1) for constrained links, served over CoAP (`/st`).
    compact: CoseStatusResponder

    def routes(self) -> list[web.RouteDef]:
        return [*status_routes(self.files), *self.ocsp.routes()]

    def handler(self, extra: Mapping[str, Handler] | None = None) -> Handler:
        """The plain-HTTP port's one handler: OCSP, CRLs, filters, allowlists, and the `extra`
        routes by path prefix (the server's /metrics)."""
        files = self.files.handle
        routes = {"/ocsp": self.ocsp.handle, "/crl": files, "/filter": files, "/allowlist": files}
        return dispatch({**routes, **(extra or {})})


def status_service(authority: Authority) -> StatusService:
    """The status service of `authority`: OCSP for every CA that issues or issued device
    certificates (a retired CA's too, for the certificates it issued)."""
    issuers = []
    for ca in authority.device_issuers():
        delegated = responder(authority, ca.name)
        issuers.append(OcspIssuer(ca.name, ca.certificate, delegated.certificate, delegated.key))
    source = StoreStatus(authority.engine)
    ocsp_responder = OcspResponder(issuers, source, authority.clock)
    return StatusService(
        StatusFiles(authority),
        ocsp_responder,
        OcspHttp(ocsp_responder, authority.clock),
        CoseStatusResponder(issuers, source, authority.clock),
    )
