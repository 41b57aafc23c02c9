"""The comparison's plots, PNG and SVG (matplotlib, drawn off-screen)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from devid.sim.compare import Comparison

COLOURS = {"long-lived": "#7f7f7f", "renew": "#1f77b4", "short-lived": "#2ca02c", "session": "#d62728"}


def write_plots(comparison: Comparison, out: Path) -> list[Path]:
    """Two figures, each as PNG and SVG: the strategies' trade-offs, and the CA's load over the run."""
    out.mkdir(parents=True, exist_ok=True)
    plt.rcParams["svg.hashsalt"] = "devid"  # the same comparison draws the same SVG
    written = []
    for name, draw in (("tradeoffs", _tradeoffs), ("ca-load", _ca_load)):
        figure = draw(comparison)
        for suffix in ("png", "svg"):
            path = out / f"{name}.{suffix}"
            figure.savefig(path, dpi=110, metadata={"Date": None} if suffix == "svg" else None)
            written.append(path)
        plt.close(figure)
    return written


def _tradeoffs(comparison: Comparison) -> Figure:
    rows = comparison.rows()
    names = [r["strategy"] for r in rows]
    colours = [COLOURS.get(n, "#333333") for n in names]
    first = rows[0]
    figure, axes = plt.subplots(2, 2, figsize=(11, 7.5), layout="constrained")
    figure.suptitle(
        f"Renewal strategies: {first['devices']:,} devices, {first['years']:g} years, "
        f"{first['connectivity']} link, seed-matched fleets"
    )
    lost = axes[0][0]
    lost.bar(names, [r["lost_device_days"] / r["devices"] for r in rows], color=colours)
    lost.set_title("Operational identity lost while online")
    lost.set_ylabel("days per device")
    link = axes[0][1]
    certs = [r["cert_kb_per_device_year"] for r in rows]
    crls = [r["revocation_kb_per_device_year"] for r in rows]
    link.bar(names, certs, color=colours, label="certificate exchanges")
    link.bar(names, crls, bottom=certs, color="#ffbf00", label="revocation data (delta CRLs)")
    link.set_title("Bytes on the device link")
    link.set_ylabel("KB per device per year")
    link.legend(fontsize="small")
    load = axes[1][0]
    steady = [max(r["ca_steady_peak_per_hour"], 0.1) for r in rows]
    load.bar(names, steady, color=colours, label="peak hour after the first month")
    load.scatter(
        names, [max(r["ca_mean_per_hour"], 0.1) for r in rows], color="black", zorder=3, label="mean"
    )
    load.set_yscale("log")
    load.set_title("CA load")
    load.set_ylabel("requests per hour (log)")
    load.legend(fontsize="small")
    exposure = axes[1][1]
    exposure.bar(
        names, [max(r["exposure_max_hours"] or 0, 0.01) for r in rows], color=colours, label="longest"
    )
    exposure.scatter(
        names, [max(r["exposure_mean_hours"] or 0, 0.01) for r in rows], color="black", zorder=3, label="mean"
    )
    exposure.set_yscale("log")
    exposure.set_title("Exposure after a key compromise")
    exposure.set_ylabel("hours the revoked credential still works (log)")
    exposure.legend(fontsize="small")
    return figure


def _ca_load(comparison: Comparison) -> Figure:
    figure, axes = plt.subplots(figsize=(11, 4.5), layout="constrained")
    for result in comparison.results:
        monthly = result.monthly_requests()
        title = result.spec.strategy.display
        axes.step(
            [m * 30 / 365.25 for m in range(len(monthly))], [max(n, 0.5) for n in monthly],
            label=title, color=COLOURS.get(title), linewidth=1.2, where="post",
        )  # fmt: skip
    axes.set_yscale("log")
    axes.set_xlabel("years since deployment")
    axes.set_ylabel("CA requests per 30 days (log)")
    axes.set_title("CA load over the run: the first enrollment wave, then each strategy's rhythm")
    axes.legend()
    axes.grid(alpha=0.3)
    return figure
