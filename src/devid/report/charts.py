"""A horizontal bar chart as inline SVG, for the sizes of status data (the expiry timeline is the
dashboard's own `devid.ui.chart`); drawn with its tick step and colours."""

from __future__ import annotations

import math
from collections.abc import Sequence

from devid.ui.chart import COLOURS, nice_step
from devid.ui.html import Markup, h, join

WIDTH = 960
LABEL_W, VALUE_W, BAR_H, GAP, TOP, AXIS = 230, 150, 22, 6, 10, 44


def bar_chart(bars: Sequence[tuple[str, int, int]], unit: str, caption: str) -> Markup:
    """One bar per (label, value, colour index), linear from 0, each labelled with its value."""
    largest = max((value for _, value, _ in bars), default=0)
    step = nice_step(largest)
    top = max(step * math.ceil(largest / step), step)
    plot_w = WIDTH - LABEL_W - VALUE_W
    plot_h = len(bars) * (BAR_H + GAP)
    parts: list[Markup] = []
    for value in range(0, top + 1, step):
        x = LABEL_W + plot_w * value / top
        parts.append(
            h(
                '<line x1="{x}" x2="{x}" y1="{}" y2="{}" stroke="#ddd"/>'
                '<text x="{x}" y="{}" text-anchor="middle" class="tick">{}</text>',
                TOP,
                TOP + plot_h,
                TOP + plot_h + 16,
                f"{value:,}",
                x=f"{x:.1f}",
            )
        )
    for i, (label, value, colour) in enumerate(bars):
        y = TOP + i * (BAR_H + GAP)
        width = max(plot_w * value / top, 1.5)
        parts.append(
            h(
                '<text x="{}" y="{}" text-anchor="end" class="tick">{}</text>'
                '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{}: {} {}</title></rect>'
                '<text x="{}" y="{}" class="tick">{} {}</text>',
                LABEL_W - 8,
                y + BAR_H / 2 + 4,
                label,
                LABEL_W,
                y,
                f"{width:.1f}",
                BAR_H,
                COLOURS[colour % len(COLOURS)],
                label,
                f"{value:,}",
                unit,
                f"{LABEL_W + width + 6:.1f}",
                y + BAR_H / 2 + 4,
                f"{value:,}",
                unit,
            )
        )
    height = TOP + plot_h + AXIS
    axis = h(
        '<line x1="{l}" x2="{l}" y1="{t}" y2="{b}" stroke="#333"/>'
        '<text x="{mid}" y="{yl}" text-anchor="middle" class="axis">{}</text>',
        unit,
        l=LABEL_W,
        t=TOP,
        b=TOP + plot_h,
        mid=LABEL_W + plot_w / 2,
        yl=height - 6,
    )
    return h(
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {} {}" width="100%" role="img" '
        'aria-label="{}"><style>.tick{{font:12px sans-serif;fill:#333}}.axis{{font:13px sans-serif;'
        "fill:#111}}</style>{}{}</svg>",
        WIDTH,
        height,
        caption,
        axis,
        join(parts),
    )
