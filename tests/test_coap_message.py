"""The CoAP codec (RFC 7252, RFC 7959 block options): what it encodes decodes to the same
message, and any datagram either decodes (to the message that encodes to it) or is refused with
MessageFormatError."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devid.coap.message import Block, Code, Message, MessageFormatError, Option, Type, decode, encode_uint

options = st.lists(st.tuples(st.integers(0, 2000), st.binary(max_size=300)), max_size=8).map(
    lambda items: tuple(sorted(items, key=lambda option: option[0]))
)
messages = st.builds(
    Message,
    st.sampled_from(list(Type)),
    st.integers(1, 255),
    st.integers(0, 0xFFFF),
    st.binary(max_size=8),
    options,
    st.binary(max_size=1200),
)


@given(messages)
def test_encode_then_decode_is_the_identity(message: Message) -> None:
    assert decode(message.encode()) == message


@given(st.binary(max_size=300))
def test_any_datagram_decodes_or_is_refused_cleanly(data: bytes) -> None:
    try:
        message = decode(data)
    except MessageFormatError as exc:
        assert exc.code == "request-coap-format"
        return
    assert message.encode() == data  # the wire format has one encoding per message


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x40\x01", "header alone is 4"),
        (b"\x80\x01\x00\x01", "version 2"),
        (b"\x49\x01\x00\x01" + b"t" * 9, "token length 9"),
        (b"\x40\x00\x00\x01\xff", "Empty message carries"),
        (b"\x40\x01\x00\x01\xff", "no payload after it"),
        (b"\x40\x01\x00\x01\xd1", "runs past the end"),
        (b"\x40\x01\x00\x01\xf0", "nibble 15"),
        (b"\x40\x01\x00\x01\x15", "runs past the end"),
    ],
)
def test_malformed_messages_say_what_is_wrong(data: bytes, why: str) -> None:
    with pytest.raises(MessageFormatError, match=why):
        decode(data)


def test_block_option_values() -> None:
    block = Block(5, True, 2)
    assert (block.size, block.offset, Block.decode(block.encode())) == (64, 320, block)
    assert Block.decode(b"") == Block(0, False, 0)
    with pytest.raises(MessageFormatError, match="BERT"):
        Block.decode(bytes([0x0F]))
    with pytest.raises(MessageFormatError, match="at most 3"):
        Block.decode(b"\x00" * 4)
    message = Message(Type.CON, Code.POST, 1, options=((Option.BLOCK1, block.encode()),))
    assert decode(message.encode()).block(Option.BLOCK1) == block
    assert encode_uint(0) == b"" and encode_uint(256) == b"\x01\x00"
