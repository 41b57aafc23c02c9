"""The demo report's simulator section, from a real (small) comparison."""

from __future__ import annotations

from pathlib import Path

from devid.report.demo import simulation_section
from devid.sim.compare import FIGURES, compare
from devid.sim.plots import write_plots


def test_simulation_section_tables_the_strategies_and_inlines_the_svg_plots(tmp_path: Path) -> None:
    comparison = compare(60, 2.0, 3, workers=1)
    plots = write_plots(comparison, tmp_path)
    rows = comparison.rows()
    html = simulation_section(rows, plots)
    assert "<tr><th></th><th>long-lived</th><th>renew</th><th>short-lived</th><th>session</th></tr>" in html
    # A line per figure, a cell per strategy, numbers grouped as the CLI prints them.
    assert html.count("<tr><td>") == len(FIGURES)
    renewals = "".join(f"<td class=n>{r['renewals']:,}</td>" for r in rows)
    assert f"<tr><td>renewals with the LDevID</td>{renewals}</tr>" in html
    assert "60 devices over 2.0 years on a daily link" in html
    # The SVGs are inline, without their XML prologue (invalid inside HTML); the PNG twins are not.
    assert html.count("<svg") == 2 and "<?xml" not in html and "DOCTYPE" not in html
    assert "<figcaption>ca load</figcaption>" in html and ".png" not in html


def test_values_are_escaped() -> None:
    row = {key: None for key, _ in FIGURES} | {"strategy": "short-lived <b>", "renewals": 5}
    html = simulation_section([row], [])
    assert "<th>short-lived &lt;b&gt;</th>" in html and "<b>" not in html
    assert "<td></td>" in html  # None is empty
