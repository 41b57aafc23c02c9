"""Weekly stacked bar charts as inline SVG (the expiry timeline, revocations over time): a bar per
week, one colour per series, with axes, tick labels, units and a legend. Hand-drawn because no
chart library renders server-side SVG without pulling in a plotting stack (and the page must make
no outside request)."""

from __future__ import annotations

import math
from datetime import datetime, timedelta

from devid.ui.html import Markup, h, join

COLOURS = ("#3b6fb6", "#e08a2c", "#4a9d5b", "#b6443b", "#7e5bb0", "#8a6d3b", "#2c9aa8")
WIDTH, HEIGHT = 960, 340
LEFT, RIGHT, TOP, BOTTOM = 64, 150, 20, 56


def nice_step(top: int, ticks: int = 5) -> int:
    """A round tick step (1, 2 or 5 times a power of ten) giving about `ticks` ticks up to `top`."""
    raw = max(top, 1) / ticks
    power = 10 ** math.floor(math.log10(raw)) if raw >= 1 else 1
    return int(next(m * power for m in (1, 2, 5, 10) if m * power >= raw))


def expiry_chart(weeks: list[dict[str, int]], start: datetime) -> Markup:
    """Certificates expiring in each week from `start`, stacked by profile."""
    return weekly_chart(weeks, start, "expiring", f"for the next {len(weeks)} weeks, by profile")


def weekly_chart(weeks: list[dict[str, int]], start: datetime, what: str, aria: str) -> Markup:
    """Certificates `what` (expiring, revoked) in each week from `start`, stacked by series."""
    profiles = sorted({p for week in weeks for p in week})
    totals = [sum(week.values()) for week in weeks]
    step = nice_step(max(totals, default=0))
    top = max(step * math.ceil(max(totals, default=0) / step), step)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    bar_w = plot_w / max(len(weeks), 1)
    parts: list[Markup] = []
    for value in range(0, top + 1, step):
        y = TOP + plot_h - plot_h * value / top
        parts.append(
            h(
                '<line x1="{}" x2="{}" y1="{y}" y2="{y}" stroke="#ddd"/>'
                '<text x="{}" y="{y}" dy="4" text-anchor="end" class="tick">{}</text>',
                LEFT,
                LEFT + plot_w,
                LEFT - 6,
                f"{value:,}",
                y=f"{y:.1f}",
            )
        )
    for i, week in enumerate(weeks):
        y = TOP + plot_h
        for j, profile in enumerate(profiles):
            count = week.get(profile, 0)
            if not count:
                continue
            height = plot_h * count / top
            y -= height
            label = f"{profile}: {count:,} {what} in the week of {(start + timedelta(weeks=i)):%Y-%m-%d}"
            parts.append(
                h(
                    '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{}</title></rect>',
                    f"{LEFT + i * bar_w + 1:.1f}",
                    f"{y:.1f}",
                    f"{max(bar_w - 2, 1):.1f}",
                    f"{height:.1f}",
                    COLOURS[j % len(COLOURS)],
                    label,
                )
            )
        if i % 4 == 0:
            x = LEFT + i * bar_w + bar_w / 2
            parts.append(
                h(
                    '<line x1="{x}" x2="{x}" y1="{}" y2="{}" stroke="#333"/>'
                    '<text x="{x}" y="{}" text-anchor="middle" class="tick">{}</text>',
                    TOP + plot_h,
                    TOP + plot_h + 5,
                    TOP + plot_h + 18,
                    f"{start + timedelta(weeks=i):%d %b}",
                    x=f"{x:.1f}",
                )
            )
    for j, profile in enumerate(profiles):
        y = TOP + 10 + 20 * j
        parts.append(
            h(
                '<rect x="{}" y="{}" width="12" height="12" fill="{}"/>'
                '<text x="{}" y="{}" class="tick">{}</text>',
                LEFT + plot_w + 16,
                y,
                COLOURS[j % len(COLOURS)],
                LEFT + plot_w + 34,
                y + 10,
                profile,
            )
        )
    axes = h(
        '<line x1="{l}" x2="{l}" y1="{t}" y2="{b}" stroke="#333"/>'
        '<line x1="{l}" x2="{r}" y1="{b}" y2="{b}" stroke="#333"/>'
        '<text x="{mid}" y="{xl}" text-anchor="middle" class="axis">week starting (UTC, {year})</text>'
        '<text transform="translate(16 {ym}) rotate(-90)" text-anchor="middle" class="axis">'
        "certificates {what} per week</text>",
        l=LEFT,
        r=LEFT + plot_w,
        t=TOP,
        b=TOP + plot_h,
        mid=LEFT + plot_w / 2,
        xl=HEIGHT - 12,
        ym=TOP + plot_h / 2,
        year=f"{start:%Y} to {start + timedelta(weeks=len(weeks)):%Y}",
        what=what,
    )
    return h(
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {} {}" width="100%" role="img" '
        'aria-label="certificates {} per week {}">'
        "<style>.tick{{font:11px sans-serif;fill:#333}}.axis{{font:13px sans-serif;fill:#111}}</style>"
        "{}{}</svg>",
        WIDTH,
        HEIGHT,
        what,
        aria,
        axes,
        join(parts),
    )
