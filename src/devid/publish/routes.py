"""The status paths (CRLs, filters, allowlists) as aiohttp routes on the TLS server."""

from __future__ import annotations

import asyncio

from aiohttp import web

from devid.publish.status_files import StatusFiles


def status_routes(files: StatusFiles) -> list[web.RouteDef]:
    """GET (and HEAD) under /crl/, /filter/ and /allowlist/, answered by `files` off the event loop
    (a miss reads the store; an allowlist may be built)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        status, headers, body = await asyncio.to_thread(
            files.handle, request.method, request.path_qs, request.headers, b""
        )
        return web.Response(status=status, headers=dict(headers), body=body)

    return [
        web.get("/crl/{tail:.+}", handle),
        web.get("/filter/{name}", handle),
        web.get("/allowlist/{name}", handle),
    ]
