"""The EST benchmark's minimal HTTP/1.1 reader: the answers other EST servers may send."""

from __future__ import annotations

import pytest

from devid.bench.est import _Response


class _Chunks:
    """Stands in for the TLS socket: recv() hands out the given pieces, then b"" (closed)."""

    def __init__(self, *pieces: bytes) -> None:
        self.pieces = list(pieces)

    def recv(self, _size: int) -> bytes:
        return self.pieces.pop(0) if self.pieces else b""


def read(*pieces: bytes) -> _Response:
    return _Response(_Chunks(*pieces), b"")  # type: ignore[arg-type]


def test_content_length_split_across_reads_keeps_what_follows() -> None:
    resp = read(b"HTTP/1.1 200 OK\r\nContent-Le", b"ngth: 5\r\n\r\nab", b"cdeHTTP/1.1")
    assert (resp.status, resp.body, resp.close, resp.leftover) == (200, b"abcde", False, b"HTTP/1.1")


def test_chunked_body() -> None:
    resp = read(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n")
    assert (resp.status, resp.body) == (200, b"abcde")


def test_body_until_close_and_connection_close() -> None:
    resp = read(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\nbad ", b"csr")
    assert (resp.status, resp.body, resp.close) == (400, b"bad csr", True)


def test_truncated_answer_and_non_http_raise() -> None:
    with pytest.raises(ConnectionError):
        read(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    with pytest.raises(ConnectionError):
        read(b"SSH-2.0-OpenSSH\r\n\r\n")
