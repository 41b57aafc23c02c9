"""HTML built from literal templates whose every substituted value is escaped, unless it is
already `Markup` (HTML this module made). Small enough not to need a template engine."""

from __future__ import annotations

import html
from collections.abc import Iterable


class Markup(str):
    """Text that is already HTML: substituted as it is."""

    __slots__ = ()


def esc(value: object) -> Markup:
    """`value` as HTML text: escaped (quotes too, so it is safe in attributes) unless it is Markup."""
    return value if isinstance(value, Markup) else Markup(html.escape(str(value), quote=True))


def h(template: str, *args: object, **kwargs: object) -> Markup:
    """`template` (a literal in the code, never data) with `{}` fields filled by escaped values."""
    return Markup(template.format(*(esc(a) for a in args), **{k: esc(v) for k, v in kwargs.items()}))


def join(parts: Iterable[Markup]) -> Markup:
    return Markup("".join(esc(part) for part in parts))
