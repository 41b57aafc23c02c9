"""The demo report's simulator section, given the rows and plots the simulator hands over."""

from __future__ import annotations

from pathlib import Path

from devid.report.demo import simulation_section

ROWS = [
    {"strategy": "long-lived", "est_requests": 1000, "crl_bytes": 53321, "exposure_days": 1825.0},
    {"strategy": "session", "est_requests": 8760000, "crl_bytes": 0, "exposure_days": 0.0417},
    {"strategy": "short-lived <b>", "est_requests": 12167, "crl_bytes": None, "exposure_days": 30.0},
]


def test_simulation_section_tables_the_rows_and_inlines_the_svg_plots(tmp_path: Path) -> None:
    svg = tmp_path / "est_load.svg"
    svg.write_text(
        '<?xml version="1.0" encoding="utf-8" standalone="no"?>\n'
        '<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" "http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd">\n'
        '<svg xmlns="http://www.w3.org/2000/svg" width="460pt"><rect id="plot-body"/></svg>\n'
    )
    png = tmp_path / "est_load.png"
    png.write_bytes(b"\x89PNG")
    html = simulation_section(ROWS, [svg, png])
    assert "<th>strategy</th><th>est_requests</th><th>crl_bytes</th><th>exposure_days</th>" in html
    assert (
        "<tr><td>long-lived</td><td class=n>1,000</td><td class=n>53,321</td><td class=n>1,825</td></tr>"
        in html
    )
    assert "<td class=n>8,760,000</td>" in html and "<td class=n>0.0417</td>" in html
    assert "<td>short-lived &lt;b&gt;</td>" in html and "<td></td>" in html  # escaped; None is empty
    # The SVG is inline, without its XML prologue (invalid inside HTML); the PNG twin is not embedded.
    assert html.count("<svg") == 1 and '<rect id="plot-body"/>' in html
    assert "<?xml" not in html and "DOCTYPE" not in html and "PNG" not in html
    assert "<figcaption>est load</figcaption>" in html
