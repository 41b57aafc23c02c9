"""A small HTTP/1.1 server for the plain-HTTP status port: OCSP, CRLs and filters.

Written by hand on asyncio because aiohttp's per-request overhead (request and response objects,
middleware chain, stream readers) keeps it far below the target of 10,000 pre-signed OCSP answers
per second on one core with a new connection per request. What it serves is small, public and
unauthenticated, so it does only what that needs: requests with a Content-Length body or none (a
chunked upload is refused with 411), keep-alive for HTTP/1.1 unless `Connection: close`, answers
in order (pipelining), limits on header and body size (431, 413), a deadline for each request to
arrive and for an idle connection, and 400 and close for anything it cannot read.

Most status clients (RFC 5019 OCSP, CRL fetchers) open a connection, send one request and close.
The listener accepts itself, with TCP_DEFER_ACCEPT (Linux: woken only once the request is there),
and answers a connection whose first read holds one whole request that does not keep the
connection alive on the spot: accept, recv, send, close, without an asyncio transport, whose
set-up and tear-down cost several system calls and callbacks more than the answer itself. Every
other connection gets an asyncio.Protocol (`_Connection`) with the bytes already read.

The application is one synchronous callable (`Handler`): answers come from memory, and a call that
blocks would block every connection anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, NamedTuple

log = logging.getLogger("devid.publish.http")

#: (status, headers, body) of one response; Content-Length, Date and Connection are added.
Reply = tuple[int, Sequence[tuple[str, str]], bytes]
#: (method, request target as sent, headers by lower-case name, body) -> the reply.
Handler = Callable[[str, str, Mapping[str, str], bytes], Reply]

_REASONS = {status.value: status.phrase for status in HTTPStatus}
_TEXT = (("Content-Type", "text/plain"),)
#: Connections accepted per wake-up of the listener, so that accepting cannot starve the others.
_ACCEPT_BATCH = 128
#: accept() errors that mean "no resources now": stop accepting for a moment instead of spinning.
_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


@dataclass(frozen=True)
class Limits:
    #: The request line and headers together.
    max_header_bytes: int = 8 * 1024
    max_body_bytes: int = 16 * 1024
    #: Seconds from a request's first byte until all of it (headers and body) has arrived.
    request_timeout: float = 10.0
    #: Seconds a kept-alive connection may wait for its next request.
    idle_timeout: float = 30.0


def dispatch(routes: Mapping[str, Handler]) -> Handler:
    """One handler from several, each serving the paths under its prefix (the longest wins); 404
    elsewhere. `{"/ocsp": ocsp.handle, "/crl": crls.handle}`."""
    ordered = sorted(routes.items(), key=lambda item: len(item[0]), reverse=True)

    def handle(method: str, target: str, headers: Mapping[str, str], body: bytes) -> Reply:
        for prefix, handler in ordered:
            if target.startswith(prefix) and target[len(prefix) : len(prefix) + 1] in ("", "/", "?"):
                return handler(method, target, headers, body)
        return 404, _TEXT, b"not found\n"

    return handle


class _Request(NamedTuple):
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool
    #: Octets of the buffer this request took.
    size: int


class _Incomplete(NamedTuple):
    """More octets are needed; `expect_continue` once the head is in and asks for 100 Continue."""

    expect_continue: bool


def _parse(buffer: bytes, limits: Limits) -> _Request | _Incomplete | int:
    """The first request in `buffer`, or that more is needed, or the status refusing it."""
    end = buffer.find(b"\r\n\r\n", 0, limits.max_header_bytes + 4)
    if end < 0:
        return 431 if len(buffer) > limits.max_header_bytes else _Incomplete(False)
    lines = buffer[:end].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[1]:
        return 400
    version = parts[2]
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        return 505 if version.startswith(b"HTTP/") else 400
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or b" " in name:
            return 400  # also obsolete line folding (a line starting with a space)
        key = name.decode("latin-1").lower()
        text = value.strip().decode("latin-1")
        if key in headers:
            if key == "content-length" and headers[key] != text:
                return 400
            text = f"{headers[key]}, {text}"
        headers[key] = text
    if "transfer-encoding" in headers:
        return 411
    length = headers.get("content-length", "0")
    if not length.isdigit() or not length.isascii():
        return 400
    size = end + 4 + int(length)
    if int(length) > limits.max_body_bytes:
        return 413
    if len(buffer) < size:
        return _Incomplete(headers.get("expect", "").lower() == "100-continue")
    keep_alive = version == b"HTTP/1.1" and "close" not in headers.get("connection", "").lower()
    method, target = parts[0].decode("ascii"), parts[1].decode("latin-1")
    return _Request(method, target, headers, buffer[end + 4 : size], keep_alive, size)


class PlainHttpServer:
    """Serves `handler` on `host`:`port` (0: any free port) once `start` has run."""

    def __init__(self, handler: Handler, limits: Limits = Limits()) -> None:
        self.handler = handler
        self.limits = limits
        self.connections: set[_Connection] = set()
        #: Coarse monotonic time (set by the sweeper each second): deadlines cost no system call.
        self.tick = time.monotonic()
        self._read_size = limits.max_header_bytes + limits.max_body_bytes + 4
        self._date_second = 0
        self._date = ""
        self._listener: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[object]] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0, *, reuse_port: bool = False) -> None:
        """Listen; `reuse_port`: SO_REUSEPORT, so the workers of one `devid serve` share the port."""
        self._loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.create_server((host, port), family=family, backlog=4096, reuse_port=reuse_port)
        listener.setblocking(False)
        if hasattr(socket, "TCP_DEFER_ACCEPT"):
            listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 1)
        self._listener = listener
        self._loop.add_reader(listener.fileno(), self._accept)
        self._spawn(self._sweep())

    @property
    def port(self) -> int:
        assert self._listener is not None, "not started"
        return int(self._listener.getsockname()[1])

    async def close(self) -> None:
        if self._listener is not None and self._loop is not None:
            self._loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for connection in list(self.connections):
            connection.abort()

    def date(self) -> str:
        """The Date header's value, formatted once a second."""
        now = int(time.time())
        if now != self._date_second:
            self._date_second, self._date = now, formatdate(now, usegmt=True)
        return self._date

    def respond(self, request: _Request) -> tuple[bytes, bool]:
        """The response to `request` (as octets) and whether the connection stays open."""
        keep_alive = request.keep_alive
        try:
            status, headers, body = self.handler(
                request.method, request.target, request.headers, request.body
            )
        except Exception:
            log.exception("plain HTTP handler failed on %s %s", request.method, request.target[:200])
            status, headers, body, keep_alive = 500, _TEXT, b"internal error\n", False
        length = len(body)
        return self.encode(
            status, headers, b"" if request.method == "HEAD" else body, length, keep_alive
        ), keep_alive

    def refuse(self, status: int) -> bytes:
        """The response refusing a request that cannot be read (the connection then closes)."""
        body = f"{_REASONS[status]}\n".encode()
        return self.encode(status, _TEXT, body, len(body), False)

    def encode(
        self, status: int, headers: Sequence[tuple[str, str]], body: bytes, length: int, keep_alive: bool
    ) -> bytes:
        head = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\nDate: {self.date()}\r\n"]
        head.extend(f"{name}: {value}\r\n" for name, value in headers)
        head.append(
            f"Content-Length: {length}\r\n\r\n" if keep_alive else f"Content-Length: {length}{_CLOSE}"
        )
        return "".join(head).encode("latin-1") + body

    def _accept(self) -> None:
        assert self._listener is not None and self._loop is not None
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, _peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRORS:
                    log.warning("plain HTTP: cannot accept (%s); pausing for a second", exc)
                    fd = self._listener.fileno()
                    self._loop.remove_reader(fd)
                    self._loop.call_later(1.0, self._loop.add_reader, fd, self._accept)
                    return
                continue  # the client gave up (ECONNABORTED, ...)
            self._one_shot(sock)

    def _one_shot(self, sock: socket.socket) -> None:
        """Answer a connection that brought one whole closing request; adopt any other."""
        try:
            data = sock.recv(self._read_size, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            data = b""
        except OSError:
            sock.close()
            return
        else:
            if not data:  # closed before asking anything
                sock.close()
                return
        parsed = _parse(data, self.limits) if data else _Incomplete(False)
        if isinstance(parsed, int):
            out = self.refuse(parsed)
        elif isinstance(parsed, _Incomplete) or parsed.keep_alive or parsed.size < len(data):
            self._adopt(sock, data, b"")
            return
        else:
            out, _keep_alive = self.respond(parsed)
        try:
            sent = sock.send(out, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            sock.close()
            return
        if sent < len(out):
            self._adopt(sock, b"", out[sent:])
        else:
            sock.close()

    def _adopt(self, sock: socket.socket, received: bytes, unsent: bytes) -> None:
        """Hand `sock` to an asyncio transport: with the octets already `received`, or with the
        `unsent` rest of a last answer."""
        assert self._loop is not None
        sock.setblocking(False)
        self._spawn(self._loop.connect_accepted_socket(lambda: _Connection(self, received, unsent), sock))

    def _spawn(self, coroutine: Coroutine[Any, Any, object]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("plain HTTP: connection set-up failed: %s", task.exception())

    async def _sweep(self) -> None:
        """Close connections past their deadline (slow senders, idle keep-alives)."""
        while True:
            await asyncio.sleep(min(1.0, self.limits.request_timeout / 2, self.limits.idle_timeout / 2))
            self.tick = time.monotonic()
            for connection in [c for c in self.connections if c.deadline < self.tick]:
                connection.abort()


_CLOSE = "\r\nConnection: close\r\n\r\n"


class _Connection(asyncio.Protocol):
    """A connection the one-shot path did not finish: reads requests, answers each in turn."""

    def __init__(self, server: PlainHttpServer, received: bytes, unsent: bytes) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._buffer = received
        self._unsent = unsent
        self._continued = False
        self.deadline = server.tick + server.limits.request_timeout

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._server.connections.add(self)
        if self._unsent:
            transport.write(self._unsent)
            transport.close()
        elif self._buffer:
            self._serve()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._transport = None

    def pause_writing(self) -> None:
        # A client that sends requests without reading answers: stop reading until it catches up.
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if not self._buffer:
            self.deadline = self._server.tick + self._server.limits.request_timeout
        self._buffer += data
        self._serve()

    def _serve(self) -> None:
        """Answer every whole request in the buffer."""
        server = self._server
        while self._buffer and self._transport is not None and not self._transport.is_closing():
            parsed = _parse(self._buffer, server.limits)
            if isinstance(parsed, _Incomplete):
                if parsed.expect_continue and not self._continued:
                    self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    self._continued = True
                return
            if isinstance(parsed, int):
                self._buffer = b""
                self._transport.write(server.refuse(parsed))
                self._transport.close()
                return
            self._buffer = self._buffer[parsed.size :]
            self._continued = False
            out, keep_alive = server.respond(parsed)
            self._transport.write(out)
            if not keep_alive:
                self._transport.close()
                return
            limit = server.limits.request_timeout if self._buffer else server.limits.idle_timeout
            self.deadline = server.tick + limit
