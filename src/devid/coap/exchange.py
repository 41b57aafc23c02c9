"""The CoAP endpoint inside one peer's DTLS session: message layer, block-wise transfer, refusals.

Requests are answered piggybacked (an ACK for a confirmable request), one at a time per peer
(RFC 7252's NSTART 1); a retransmitted request gets the answer already sent, never a second
enrollment. Bodies over one datagram travel block-wise (RFC 7959): a request body (Block1) is
assembled in order, up to `BlockLimits.max_body` and for at most `block_timeout` seconds; a
response body over the block size is kept, one per peer and for as long, and served block by
block (Block2) without running the request again. So a peer holds at most one body each way,
and a transfer that never finishes is forgotten. Refusals carry a diagnostic payload
`reason [code]` (text/plain), the same reason and code an HTTPS client would read.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from devid.coap.message import (
    Block,
    Code,
    Message,
    MessageFormatError,
    Option,
    Type,
    critical,
    decode,
    dotted,
    encode_uint,
)
from devid.errors import BodyTooLarge, DevidError, RateLimited, RequestInvalid, StoreUnavailable
from devid.store.engine import unavailable
from devid.web.errors import status_for

log = logging.getLogger("devid.coap")

TEXT_PLAIN = 0
#: CoAP codes of the HTTP statuses devid's errors map to (RFC 8075 section 7, RFC 8516 for 4.29).
_CODE_OF_STATUS = {
    400: Code.BAD_REQUEST,
    401: Code.UNAUTHORIZED,
    403: Code.FORBIDDEN,
    404: Code.NOT_FOUND,
    409: Code.CONFLICT,
    413: Code.REQUEST_ENTITY_TOO_LARGE,
    415: Code.UNSUPPORTED_CONTENT_FORMAT,
    428: Code.PRECONDITION_FAILED,
    429: Code.TOO_MANY_REQUESTS,
    502: Code.BAD_GATEWAY,
    503: Code.SERVICE_UNAVAILABLE,
}
#: Codes of refusals HTTP has no status of its own for.
_CODE_OF_ERROR = {
    "not-acceptable": Code.NOT_ACCEPTABLE,
    "request-block-incomplete": Code.REQUEST_ENTITY_INCOMPLETE,
}
#: Options a request may carry (any other critical option is refused with 4.02, RFC 7252 5.4.1).
_UNDERSTOOD = frozenset(
    {Option.URI_HOST, Option.URI_PORT, Option.URI_PATH, Option.URI_QUERY, Option.CONTENT_FORMAT}
    | {Option.ACCEPT, Option.BLOCK1, Option.BLOCK2, Option.SIZE1, Option.SIZE2}
)
#: Answers remembered per peer for retransmitted requests (by message ID).
_REMEMBERED = 16


@dataclass(frozen=True)
class BlockLimits:
    #: Largest request body (a P-256 CSR is ~300 bytes DER).
    max_body: int = 64 * 1024
    #: Seconds a block-wise transfer may take from its first block to its last.
    block_timeout: float = 30.0
    #: Block size exponent of responses (6: 1024 bytes, RFC 7959's largest) unless the peer asks smaller.
    szx: int = 6


@dataclass(frozen=True)
class Request:
    method: int
    path: tuple[str, ...]
    payload: bytes
    content_format: int | None
    accept: int | None
    #: The peer's DTLS client certificate (DER) and address.
    certificate: bytes | None
    host: str
    #: The certificates the client sent (DER, leaf first), for chains to a manufacturer CA.
    chain: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class Response:
    code: int
    payload: bytes = b""
    content_format: int | None = None
    options: tuple[tuple[int, bytes], ...] = ()


Handler = Callable[[Request], Awaitable[Response]]


class Peer(Protocol):
    """The DTLS session an endpoint answers through."""

    @property
    def host(self) -> str: ...

    def send(self, plaintext: bytes) -> None: ...

    def peer_certificate(self) -> bytes | None: ...

    def peer_chain(self) -> tuple[bytes, ...]: ...


def refusal(error: DevidError, limit: int | None = None) -> Response:
    """The CoAP answer to a devid error: the code of its HTTP status, a diagnostic payload, and
    Max-Age for when to retry where HTTP would say Retry-After, Size1 (`limit`) with a 4.13."""
    code = _CODE_OF_ERROR.get(error.code) or _CODE_OF_STATUS.get(
        status_for(error), Code.INTERNAL_SERVER_ERROR
    )
    if code == Code.INTERNAL_SERVER_ERROR:
        log.error("internal error answering a CoAP request: %s [%s]", error.message, error.code)
        text = "internal error: the server cannot complete this request now [internal]"
    else:
        text = f"{error.message} [{error.code}]"
    options: tuple[tuple[int, bytes], ...] = ()
    if isinstance(error, RateLimited | StoreUnavailable):
        options = ((Option.MAX_AGE, encode_uint(error.retry_after)),)
    elif isinstance(error, BodyTooLarge) and limit is not None:
        options = ((Option.SIZE1, encode_uint(limit)),)
    return Response(code, text.encode(), TEXT_PLAIN, options)


class BlockIncomplete(RequestInvalid):
    """A block that does not continue the transfer in progress (4.08)."""

    def __init__(self, message: str) -> None:
        super().__init__("request-block-incomplete", message)


@dataclass
class _Transfer:
    """A body moving block-wise: a request body being assembled, or a response being served."""

    path: tuple[str, ...]
    started: float
    body: bytearray = field(default_factory=bytearray)
    response: Response | None = None


#: Told of each request answered: its resource (the last Uri-Path segment) and the code, as `2.05`.
Observer = Callable[[str, str], None]


def _resource(message: Message) -> str:
    try:
        path = message.path
    except MessageFormatError:
        return "other"
    return path[-1] if path else "root"


class CoapEndpoint:
    """Serves `handler` to one peer (see the module doc)."""

    def __init__(
        self,
        peer: Peer,
        handler: Handler,
        limits: BlockLimits,
        clock: Callable[[], float],
        tasks: set[asyncio.Task[None]],
        observe: Observer | None = None,
    ) -> None:
        """`tasks`: where requests being answered are held (by the server, which waits for them or
        cancels them when it stops); an answer for a peer whose session closed meanwhile is
        dropped, the enrollment behind it completes (like an HTTP client that went away)."""
        self.tasks = tasks
        self.observe = observe
        self.peer = peer
        self.handler = handler
        self.limits = limits
        self.clock = clock
        self._answered: OrderedDict[int, bytes] = OrderedDict()
        self._busy: int | None = None
        self._upload: _Transfer | None = None
        self._download: _Transfer | None = None
        self._mid = 0

    # --- the Endpoint protocol of devid.coap.dtls ------------------------------------------------

    def received(self, data: bytes) -> None:
        try:
            message = decode(data)
        except MessageFormatError as exc:
            log.info("malformed CoAP message from %s: %s", self.peer.host, exc)
            if len(data) >= 4 and data[0] >> 4 == 0x4 | Type.CON:
                self._send(Message(Type.RST, Code.EMPTY, int.from_bytes(data[2:4], "big")))
            return
        if message.type in (Type.ACK, Type.RST):
            return  # this server sends no confirmable message of its own
        if not Code.GET <= message.code <= 31:  # a ping (Empty CON), or a response sent to a server
            if message.type is Type.CON:
                self._send(Message(Type.RST, Code.EMPTY, message.mid))
            return
        answer = self._answered.get(message.mid)
        if answer is not None:
            self.peer.send(answer)
            return
        if self._busy is not None:
            return  # a second request while one is in flight (NSTART 1): the peer will retransmit
        self._busy = message.mid
        task = asyncio.get_running_loop().create_task(self._serve(message))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def sweep(self, now: float) -> None:
        if self._upload is not None and now - self._upload.started > self.limits.block_timeout:
            self._upload = None
        if self._download is not None and now - self._download.started > self.limits.block_timeout:
            self._download = None

    def closed(self) -> None:
        self._upload = self._download = None

    # --- exchanges ------------------------------------------------------------------------------

    async def _serve(self, message: Message) -> None:
        try:
            try:
                response = await self._respond(message)
            except DevidError as exc:
                response = refusal(exc, self.limits.max_body)
            except Exception as exc:  # the store away (5.03 with Max-Age), or a bug (5.00, logged)
                down = unavailable(exc)
                if down is None:
                    log.exception("CoAP request from %s failed", self.peer.host)
                    response = Response(Code.INTERNAL_SERVER_ERROR, b"internal error [internal]", TEXT_PLAIN)
                else:
                    response = refusal(down)
            options = list(response.options)
            if response.content_format is not None:
                options.append((Option.CONTENT_FORMAT, encode_uint(response.content_format)))
            if message.type is Type.CON:
                kind, mid = Type.ACK, message.mid
            else:
                kind, mid = Type.NON, self._next_mid()
            if self.observe is not None:
                self.observe(_resource(message), dotted(response.code))
            out = Message(kind, response.code, mid, message.token, tuple(options), response.payload)
            encoded = out.encode()
            self._answered[message.mid] = encoded
            while len(self._answered) > _REMEMBERED:
                self._answered.popitem(last=False)
            self.peer.send(encoded)
        finally:
            self._busy = None

    def _send(self, message: Message) -> None:
        self.peer.send(message.encode())

    def _next_mid(self) -> int:
        self._mid = (self._mid + 1) & 0xFFFF
        return self._mid

    async def _respond(self, message: Message) -> Response:
        unknown = [n for n, _ in message.options if critical(n) and n not in _UNDERSTOOD]
        if unknown:
            return Response(
                Code.BAD_OPTION, f"critical option {unknown[0]} is not understood".encode(), TEXT_PLAIN
            )
        path = message.path
        block2 = message.block(Option.BLOCK2)
        if block2 is not None and block2.num > 0:
            return self._next_block(path, block2)
        payload = message.payload
        block1 = message.block(Option.BLOCK1)
        echo: tuple[tuple[int, bytes], ...] = ()
        if block1 is not None:
            assembled = self._assemble(message, block1)
            if assembled is None:
                return Response(Code.CONTINUE, options=((Option.BLOCK1, block1.encode()),))
            payload = assembled
            echo = ((Option.BLOCK1, Block(block1.num, False, block1.szx).encode()),)
        elif len(payload) > self.limits.max_body:
            raise self._too_large(len(payload))
        request = Request(
            message.code,
            path,
            payload,
            message.uint(Option.CONTENT_FORMAT),
            message.uint(Option.ACCEPT),
            self.peer.peer_certificate(),
            self.peer.host,
            self.peer.peer_chain(),
        )
        response = await self.handler(request)
        response = Response(response.code, response.payload, response.content_format, response.options + echo)
        szx = min(self.limits.szx, block2.szx) if block2 is not None else self.limits.szx
        if len(response.payload) <= 16 << szx:
            return response
        self._download = _Transfer(path, self.clock(), response=response)
        return self._slice(response, Block(0, True, szx))

    def _assemble(self, message: Message, block: Block) -> bytes | None:
        """Add a Block1 block; the whole body once the last block is in, None until then."""
        now, path = self.clock(), message.path
        if block.num == 0:
            size1 = message.uint(Option.SIZE1)
            if size1 is not None and size1 > self.limits.max_body:
                raise self._too_large(size1)
            self._upload = _Transfer(path, now)
        upload = self._upload
        if (
            upload is None
            or upload.path != path
            or block.offset != len(upload.body)
            or now - upload.started > self.limits.block_timeout
        ):
            self._upload = None
            raise BlockIncomplete(
                f"block {block.num} of the request body does not continue a transfer in progress: "
                "send the body again from block 0"
            )
        if block.more and len(message.payload) != block.size:
            self._upload = None
            raise RequestInvalid(
                "request-block-size",
                f"block {block.num} holds {len(message.payload)} bytes, not its size {block.size}",
            )
        upload.body += message.payload
        if len(upload.body) > self.limits.max_body:
            self._upload = None
            raise self._too_large(len(upload.body))
        if block.more:
            return None
        self._upload = None
        return bytes(upload.body)

    def _too_large(self, size: int) -> BodyTooLarge:
        return BodyTooLarge(
            "body-too-large", f"request body of {size} bytes exceeds {self.limits.max_body} bytes"
        )

    def _next_block(self, path: tuple[str, ...], block: Block) -> Response:
        download = self._download
        if (
            download is None
            or download.response is None
            or download.path != path
            or self.clock() - download.started > self.limits.block_timeout
            or block.offset >= len(download.response.payload)
        ):
            raise BlockIncomplete(
                f"no response to continue with block {block.num}: send the request again from block 0"
            )
        return self._slice(download.response, block)

    def _slice(self, response: Response, block: Block) -> Response:
        body = response.payload
        end = block.offset + block.size
        more = end < len(body)
        if not more:
            self._download = None
        options = (
            *response.options,
            (Option.BLOCK2, Block(block.num, more, block.szx).encode()),
            (Option.SIZE2, encode_uint(len(body))),
        )
        return Response(response.code, body[block.offset : end], response.content_format, options)
