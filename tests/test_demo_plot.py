"""The demo's timeline.png, drawn from a made-up report (no Mininet): every flow label must be readable,
i.e. lie wholly inside the image rather than be cut off at its left edge."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from offloadgen.demo.plot import draw, figure

LABELS = ["tcp 10.0.1.10:43512 -> 192.0.2.20:5201", "udp 10.0.1.11:40000 -> 192.0.2.20:5353",
          "icmp 10.0.1.12 -> 192.0.2.20", "tcp 10.0.1.10:43514 -> 192.0.2.20:5202"]


def fake_report() -> dict[str, Any]:
    flows = [{"flow": label, "proto": label.split()[0],
              "timeline": [[1.0 + i, "slow_path"], [2.0 + i, "offloaded"], [3.0 + i, "hw_offloaded"], [20.0, "left"]]}
             for i, label in enumerate(LABELS)]
    samples = [{"t": t / 2, "switch_pps": t * 10.0, "fast_pps": 5.0, "slow_pps": 100.0} for t in range(60)]
    throughput = [{"name": "baseline", "flow": LABELS[0], "rate_series": [[1, 100], [5, 120]], "hw_offload_at": None},
                  {"name": "offloaded", "flow": LABELS[3], "rate_series": [[6, 100], [12, 900]], "hw_offload_at": 8.0}]
    return {"switch": "softswitch", "flows": flows, "samples": samples, "throughput": throughput}


def test_flow_labels_lie_inside_the_figure() -> None:
    import matplotlib.pyplot as plt

    fig = figure(fake_report())
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
        width, height = fig.canvas.get_width_height()
        flow_axis = fig.axes[2]
        labels = [t for t in flow_axis.get_yticklabels() if t.get_text()]
        assert [t.get_text() for t in labels] == LABELS
        for t in labels:
            box = t.get_window_extent(renderer)
            assert box.x0 >= 0 and box.x1 <= width and box.y0 >= 0 and box.y1 <= height, (t.get_text(), box)
    finally:
        plt.close(fig)


def test_png_has_no_text_at_its_left_edge(tmp_path: Path) -> None:
    """What a user sees: the written PNG's first pixel columns are background, not the start of a label."""
    import matplotlib.image

    path = tmp_path / "timeline.png"
    draw(fake_report(), path)
    pixels = matplotlib.image.imread(path)
    edge = pixels[:, :3, :3]  # three leftmost columns, RGB
    assert edge.min() > 0.9, "dark pixels at the left edge: a flow label is cut off"
