"""timeline.png: packets per second on each path, TCP throughput, and one row per flow coloured by state.

Drawn with matplotlib's Agg backend (no display on a test machine or over ssh). The three panels share the
time axis, so a flow turning [HW_OFFLOAD] lines up with the slow-path rate falling and the switch's rising.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 110

COLOURS = {"slow_path": "#d62728", "offloaded": "#ff7f0e", "hw_offloaded": "#2ca02c", "closing": "#9467bd",
           "teardown": "#8c564b", "dying": "#7f7f7f", "left": "#c7c7c7"}
LABELS = {"slow_path": "slow path", "offloaded": "[OFFLOAD]", "hw_offloaded": "[HW_OFFLOAD]", "closing": "closing",
          "teardown": "teardown", "dying": "dying", "left": "left flowtable"}


def draw(report: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = figure(report)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def figure(report: dict[str, Any]) -> Figure:
    """The timeline as a matplotlib figure (separate from :func:`draw` so a test can measure where the labels
    landed). Laid out by matplotlib's constrained layout, which reserves room for every tick label: the flow
    labels ("tcp 10.0.1.10:43512 -> 192.0.2.20:5201") are far wider than the other panels' numbers, and
    ``tight_layout`` with a figure-level legend cut them off at the left edge."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    flows = report["flows"]
    samples = report["samples"]
    end_t = max([s["t"] for s in samples] + [0.0])
    fig, (ax_pps, ax_tp, ax_fl) = plt.subplots(
        3, 1, sharex=True, figsize=(11, 3.2 + 2.6 + 0.35 * max(3, len(flows))), layout="constrained",
        gridspec_kw={"height_ratios": [3, 2.2, max(1.5, 0.3 * len(flows))]})
    fig.suptitle(f"offloadgen demo on {report.get('switch')}: packets per path, throughput, flow states")

    ts = [s["t"] for s in samples]
    for key, label, colour in (("switch_pps", "switch (hardware path)", "#2ca02c"),
                               ("fast_pps", "software fast path", "#ff7f0e"),
                               ("slow_pps", "slow path", "#d62728")):
        ys = [s[key] if s[key] is not None else float("nan") for s in samples]
        ax_pps.plot(ts, ys, label=label, color=colour, linewidth=1.4)
    ax_pps.set_ylabel("packets/s")
    ax_pps.set_yscale("symlog", linthresh=10)
    ax_pps.legend(loc="upper right", fontsize=8)
    ax_pps.grid(alpha=0.3)

    for x, colour in zip(report["throughput"], ("#d62728", "#2ca02c"), strict=False):
        pts = x.get("rate_series") or []
        if pts:
            ax_tp.plot([p[0] for p in pts], [p[1] for p in pts], color=colour, linewidth=1.4,
                       label=f"{x['name']}: {x['flow'] or ''}")
        if x.get("hw_offload_at") is not None:
            ax_tp.axvline(x["hw_offload_at"], color=colour, linestyle="--", linewidth=1)
    ax_tp.set_ylabel("TCP Mbit/s")
    ax_tp.legend(loc="upper right", fontsize=8)
    ax_tp.grid(alpha=0.3)

    for row, f in enumerate(flows):
        timeline = f["timeline"]
        for i, (t, state) in enumerate(timeline):
            if state == "ended":
                break
            t_next = timeline[i + 1][0] if i + 1 < len(timeline) else end_t
            if t_next > t or i + 1 == len(timeline):
                ax_fl.broken_barh([(t, max(t_next - t, 0.05))], (row - 0.4, 0.8), color=COLOURS.get(state, "#bbbbbb"))
    ax_fl.set_yticks(range(len(flows)))
    ax_fl.set_yticklabels([f["flow"] for f in flows], fontsize=7)
    ax_fl.set_ylim(-0.6, max(0.6, len(flows) - 0.4))
    ax_fl.invert_yaxis()
    ax_fl.set_xlabel("seconds since the traffic started")
    ax_fl.set_xlim(0, max(end_t, 1.0))
    fig.legend(handles=[Patch(color=c, label=LABELS[s]) for s, c in COLOURS.items()], fontsize=8,
               loc="outside lower center", ncol=len(COLOURS), frameon=False)
    return fig
