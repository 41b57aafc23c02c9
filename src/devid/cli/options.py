"""Option groups shared by several commands, and parsers for the small formats options take.

Typer builds a command's options from its function signature. Several registry commands take the
same dozen options (an enrollment's settings, a hub's endpoint); rather than repeat them in every
signature, they are declared once as the fields of a dataclass and `with_option_groups` spreads
such a parameter into its fields for Typer, and gathers them back into the dataclass on a call.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar, get_type_hints

from devid.errors import PolicyError

R = TypeVar("R")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400, "y": 365 * 86_400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdwy])\s*$")


def with_option_groups(func: Callable[..., R]) -> Callable[..., R]:
    """Spread each dataclass-typed parameter of `func` into its fields (each an Annotated Typer
    option with a default) for Typer, and rebuild the dataclass when the command runs."""
    hints = get_type_hints(func, include_extras=True)
    groups: dict[str, tuple[type[Any], list[str]]] = {}
    params: list[inspect.Parameter] = []
    for param in inspect.signature(func).parameters.values():
        kind = hints.get(param.name)
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            field_hints = get_type_hints(kind, include_extras=True)
            fields = dataclasses.fields(kind)
            groups[param.name] = (kind, [f.name for f in fields])
            params += [
                inspect.Parameter(
                    f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=field_hints[f.name]
                )
                for f in fields
            ]
        else:
            params.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints[param.name]))
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise TypeError(f"{func.__name__}: an option group repeats a parameter name")

    @functools.wraps(func)
    def command(**kwargs: Any) -> R:
        for name, (kind, fields) in groups.items():
            kwargs[name] = kind(**{f: kwargs.pop(f) for f in fields})
        return func(**kwargs)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


def parse_duration(text: str, what: str = "--lifetime") -> timedelta:
    """`30d`, `12h`, `90m`, `3600s`, `2w`, `1y` (365 days), `1.5h`."""
    match = _DURATION.match(text)
    if match is None:
        raise PolicyError(
            "duration", f"{what} {text!r} is not a duration like 30d, 12h, 90m, 3600s, 2w or 1y"
        )
    value = float(match.group(1)) * _UNITS[match.group(2)]
    if value <= 0:
        raise PolicyError("duration", f"{what} must be positive")
    return timedelta(seconds=value)


def parse_pairs(items: list[str] | None, what: str) -> dict[str, str]:
    """`KEY=VALUE` items (each option given once per pair) as a dict; the last of a repeated key wins."""
    pairs: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise PolicyError("key-value", f"{what} {item!r} is not KEY=VALUE")
        pairs[key.strip()] = value
    return pairs


def parse_latencies(items: list[str] | None) -> dict[str, float]:
    """`--latency REGION=MS` items as {region: milliseconds}."""
    latencies: dict[str, float] = {}
    for region, ms in parse_pairs(items, "--latency").items():
        try:
            latencies[region] = float(ms)
        except ValueError:
            raise PolicyError("hub-latency", f"--latency {region}={ms}: MS must be a number") from None
    return latencies
