"""CoAP messages (RFC 7252) with the block options (RFC 7959): decode and encode, nothing else.

The codec is complete for the message format, so a malformed datagram is refused here with a
`MessageFormatError` naming what is wrong (the server answers a confirmable one with Reset and
drops the rest), before anything else looks at it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import IntEnum

from devid.errors import RequestInvalid


class MessageFormatError(RequestInvalid):
    """A datagram that is not a well-formed CoAP message."""

    def __init__(self, message: str) -> None:
        super().__init__("request-coap-format", message)


class Type(IntEnum):
    CON = 0
    NON = 1
    ACK = 2
    RST = 3


def _code(cls: int, detail: int) -> int:
    return cls << 5 | detail


class Code(IntEnum):
    """Method and response codes (c.dd) EST-coaps uses."""

    EMPTY = 0
    GET = 1
    POST = 2
    PUT = 3
    DELETE = 4
    FETCH = 5  # RFC 8132
    CHANGED = _code(2, 4)
    CONTENT = _code(2, 5)
    CONTINUE = _code(2, 31)
    BAD_REQUEST = _code(4, 0)
    UNAUTHORIZED = _code(4, 1)
    BAD_OPTION = _code(4, 2)
    FORBIDDEN = _code(4, 3)
    NOT_FOUND = _code(4, 4)
    METHOD_NOT_ALLOWED = _code(4, 5)
    NOT_ACCEPTABLE = _code(4, 6)
    REQUEST_ENTITY_INCOMPLETE = _code(4, 8)
    CONFLICT = _code(4, 9)
    PRECONDITION_FAILED = _code(4, 12)
    REQUEST_ENTITY_TOO_LARGE = _code(4, 13)
    UNSUPPORTED_CONTENT_FORMAT = _code(4, 15)
    TOO_MANY_REQUESTS = _code(4, 29)
    INTERNAL_SERVER_ERROR = _code(5, 0)
    NOT_IMPLEMENTED = _code(5, 1)
    BAD_GATEWAY = _code(5, 2)
    SERVICE_UNAVAILABLE = _code(5, 3)


def dotted(code: int) -> str:
    """`4.03` for 131: how CoAP writes a code."""
    return f"{code >> 5}.{code & 31:02d}"


class Option(IntEnum):
    URI_HOST = 3
    ETAG = 4
    OBSERVE = 6
    URI_PORT = 7
    URI_PATH = 11
    CONTENT_FORMAT = 12
    MAX_AGE = 14
    URI_QUERY = 15
    ACCEPT = 17
    BLOCK2 = 23
    BLOCK1 = 27
    SIZE2 = 28
    SIZE1 = 60


def critical(number: int) -> bool:
    """RFC 7252 5.4.6: odd option numbers are critical (a receiver that does not know one refuses)."""
    return bool(number & 1)


def encode_uint(value: int) -> bytes:
    """A uint option value in the fewest bytes (0 is the empty string)."""
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


@dataclass(frozen=True)
class Block:
    """A Block1 or Block2 value (RFC 7959 2.2): block number, more-flag, size exponent."""

    num: int
    more: bool
    szx: int

    @property
    def size(self) -> int:
        return 16 << self.szx

    @property
    def offset(self) -> int:
        return self.num * self.size

    def encode(self) -> bytes:
        return encode_uint(self.num << 4 | int(self.more) << 3 | self.szx)

    @classmethod
    def decode(cls, raw: bytes) -> Block:
        if len(raw) > 3:
            raise MessageFormatError(f"a block option of {len(raw)} bytes (at most 3)")
        value = int.from_bytes(raw, "big")
        szx = value & 7
        if szx == 7:
            raise MessageFormatError("block size exponent 7 (BERT) is for CoAP over TCP only")
        return cls(value >> 4, bool(value & 8), szx)


@dataclass(frozen=True)
class Message:
    type: Type
    code: int
    mid: int
    token: bytes = b""
    #: (number, value) in the order they were given; encoded sorted by number.
    options: tuple[tuple[int, bytes], ...] = ()
    payload: bytes = b""

    def values(self, number: int) -> list[bytes]:
        return [value for n, value in self.options if n == number]

    def first(self, number: int) -> bytes | None:
        return next((value for n, value in self.options if n == number), None)

    def uint(self, number: int) -> int | None:
        raw = self.first(number)
        if raw is None:
            return None
        if len(raw) > 4:
            raise MessageFormatError(f"option {number} holds {len(raw)} bytes (a uint of at most 4)")
        return int.from_bytes(raw, "big")

    @property
    def path(self) -> tuple[str, ...]:
        try:
            return tuple(value.decode() for value in self.values(Option.URI_PATH))
        except UnicodeDecodeError:
            raise MessageFormatError("a Uri-Path segment is not UTF-8") from None

    def block(self, number: int) -> Block | None:
        raw = self.first(number)
        return None if raw is None else Block.decode(raw)

    def with_options(self, *options: tuple[int, bytes]) -> Message:
        return replace(self, options=self.options + options)

    def encode(self) -> bytes:
        if len(self.token) > 8:
            raise ValueError("a CoAP token has at most 8 bytes")
        out = bytearray([0x40 | self.type << 4 | len(self.token), self.code])
        out += self.mid.to_bytes(2, "big") + self.token
        last = 0
        for number, value in sorted(self.options, key=lambda option: option[0]):
            delta, length = number - last, len(value)
            last = number
            delta_nibble, delta_extra = _nibble(delta)
            length_nibble, length_extra = _nibble(length)
            out.append(delta_nibble << 4 | length_nibble)
            out += delta_extra + length_extra + value
        if self.payload:
            out += b"\xff" + self.payload
        return bytes(out)


def _nibble(value: int) -> tuple[int, bytes]:
    if value < 13:
        return value, b""
    if value < 269:
        return 13, bytes([value - 13])
    return 14, (value - 269).to_bytes(2, "big")


def _extended(nibble: int, data: bytes, pos: int) -> tuple[int, int]:
    if nibble < 13:
        return nibble, pos
    if nibble == 13:
        if pos + 1 > len(data):
            raise MessageFormatError("an option header runs past the end of the message")
        return data[pos] + 13, pos + 1
    if nibble == 14:
        if pos + 2 > len(data):
            raise MessageFormatError("an option header runs past the end of the message")
        return int.from_bytes(data[pos : pos + 2], "big") + 269, pos + 2
    raise MessageFormatError("option delta or length nibble 15 outside the payload marker")


def decode(data: bytes) -> Message:
    """The message in one datagram; MessageFormatError when it is not one."""
    if len(data) < 4:
        raise MessageFormatError(f"{len(data)} bytes are no CoAP message (the header alone is 4)")
    first = data[0]
    if first >> 6 != 1:
        raise MessageFormatError(f"CoAP version {first >> 6} (only 1 exists)")
    tkl = first & 0x0F
    if tkl > 8:
        raise MessageFormatError(f"token length {tkl} is reserved")
    kind, code, mid = Type(first >> 4 & 3), data[1], int.from_bytes(data[2:4], "big")
    if code == Code.EMPTY and len(data) != 4:
        raise MessageFormatError("an Empty message carries a token, options or a payload")
    if 4 + tkl > len(data):
        raise MessageFormatError("the token runs past the end of the message")
    token, pos = data[4 : 4 + tkl], 4 + tkl
    options: list[tuple[int, bytes]] = []
    number = 0
    while pos < len(data):
        if data[pos] == 0xFF:
            if pos + 1 == len(data):
                raise MessageFormatError("a payload marker with no payload after it")
            return Message(kind, code, mid, token, tuple(options), data[pos + 1 :])
        header, pos = data[pos], pos + 1
        delta, pos = _extended(header >> 4, data, pos)
        length, pos = _extended(header & 0x0F, data, pos)
        if pos + length > len(data):
            raise MessageFormatError("an option value runs past the end of the message")
        number += delta
        options.append((number, data[pos : pos + length]))
        pos += length
    return Message(kind, code, mid, token, tuple(options))
