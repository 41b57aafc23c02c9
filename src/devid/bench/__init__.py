"""Benchmarks: every figure is printed beside a baseline measured in the same run.

Output convention shared by every `devid bench` command: a Rich table, or with `--json` one JSON
object per figure per line with `name`, `value`, `unit`, and `baseline`/`ratio` where one ran.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return self.value / self.baseline if self.baseline else None

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {"name": self.name, "value": round(self.value, 3), "unit": self.unit}
        if self.baseline is not None:
            out["baseline"] = round(self.baseline, 3)
            out["baseline_name"] = self.baseline_name
            out["ratio"] = round(self.ratio or 0.0, 3)
        if self.note:
            out["note"] = self.note
        return out


def report(figures: Sequence[Figure], as_json: bool, console: Console | None = None) -> None:
    console = console or Console()
    if as_json:
        for fig in figures:
            print(json.dumps(fig.as_json()), flush=True)
        return
    table = Table(title="devid bench")
    for col in ("figure", "value", "unit", "baseline", "ratio"):
        table.add_column(
            col, justify="right" if col in ("value", "baseline", "ratio") else "left", no_wrap=True
        )
    for fig in figures:
        table.add_row(
            fig.name,
            f"{fig.value:,.1f}",
            fig.unit,
            f"{fig.baseline:,.1f}" if fig.baseline is not None else "",
            f"{fig.ratio:.2f}" if fig.ratio is not None else "",
        )
    console.print(table)
    for fig in figures:
        if fig.baseline_name or fig.note:
            base = f"baseline: {fig.baseline_name}. " if fig.baseline_name else ""
            console.print(f"  {fig.name}: {base}{fig.note}", highlight=False)
