"""CBOR diagnostic notation (RFC 8949 section 8) of a C509 certificate, for people to read."""

from __future__ import annotations

import json

import cbor2

from devid.pki.c509.cert import load


def _item(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, bytes):
        return f"h'{value.hex().upper()}'"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_item(v) for v in value) + "]"
    if isinstance(value, cbor2.CBORTag):
        return f"{value.tag}({_item(value.value)})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_item(k)}: {_item(v)}" for k, v in value.items()) + "}"
    return repr(value)


def diagnostic(data: bytes) -> str:
    """The C509Certificate in `data` in diagnostic notation (C509Malformed if it is not one)."""
    return _item(load(data))
