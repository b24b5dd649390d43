"""Turning samples into figures: throughputs, per-path packet totals, the summary table and report.json.

Every figure is computed from what was measured in this run (receiver byte counts, controller counters,
switch-port counters); where a figure cannot be computed (too few samples, a flow never offloaded) the report
says null and why, rather than inventing one.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from offloadgen.demo.track import LABELS, FlowTrack, Sample, Tracker

Series = list[tuple[float, int]]  # (t since demo start, cumulative bytes received)


def mbps(series: Series, start: float | None = None, end: float | None = None) -> float | None:
    """Mbit/s received between `start` and `end` (the samples nearest inside them); None without two samples."""
    pts = [(t, b) for t, b in series if (start is None or t >= start) and (end is None or t <= end)]
    if len(pts) < 2 or pts[-1][0] - pts[0][0] <= 0:
        return None
    return round(8 * (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0]) / 1e6, 3)


def rate_series(series: Series) -> list[tuple[float, float]]:
    """Mbit/s per interval of about 0.5 s, for the plot (the receiver reports every 0.1 s)."""
    out: list[tuple[float, float]] = []
    if not series:
        return out
    t_prev, b_prev = series[0]
    for t, b in series[1:]:
        if t - t_prev >= 0.5:
            out.append((round((t + t_prev) / 2, 3), round(8 * (b - b_prev) / (t - t_prev) / 1e6, 3)))
            t_prev, b_prev = t, b
    return out


def find_track(tracker: Tracker, proto: str, dport: int, sport: int | None = None) -> FlowTrack | None:
    for track in tracker.tracks.values():
        if track.proto == proto and track.key[4] == dport and (sport is None or track.key[2] == sport):
            return track
    return None


def transfer(name: str, series: Series, track: FlowTrack | None, sent: dict[str, Any] | None) -> dict[str, Any]:
    """One TCP transfer: total and, when it reached [HW_OFFLOAD], before/after that moment."""
    hw_at = track.first_time("hw_offloaded") if track else None
    # the flow was seen in [HW_OFFLOAD] at hw_at and not yet at not_before: measure "before" only up to the
    # latter and "after" only from the former, so neither rate mixes the two paths
    not_before = track.not_before.get("hw_offloaded") if track else None
    out: dict[str, Any] = {
        "name": name,
        "flow": track.label if track else None,
        "path": track.path() if track else None,
        "bytes": series[-1][1] if series else 0,
        "seconds": round(series[-1][0] - series[0][0], 3) if len(series) > 1 else None,
        "mbps": mbps(series),
        "hw_offload_at": hw_at,
        "hw_offload_not_before": not_before,
        "mbps_before_hw_offload": mbps(series, end=not_before) if not_before is not None else None,
        "mbps_after_hw_offload": mbps(series, start=hw_at) if hw_at is not None else None,
        "sender": sent,
        "rate_series": rate_series(series),
    }
    if hw_at is not None and out["mbps_before_hw_offload"] is None:
        out["note"] = ("in [HW_OFFLOAD] within one sampling interval of its first packets: too short a slow-path "
                       "phase to measure; the slow-path baseline transfer is the comparison")
    return out


def totals(samples: list[Sample]) -> dict[str, Any]:
    """Packets over the whole run per path: the switch's share is what entered it minus what it punted."""
    known = [s for s in samples if s.packet_in is not None]
    if len(known) < 2:
        return {"switch_packets": None, "slowpath_packets": None, "fastpath_packets": None, "switch_share": None}
    first, last = known[0], known[-1]
    entered = last.rx_packets - first.rx_packets
    punted = (last.packet_in or 0) - (first.packet_in or 0)
    slow = (last.slowpath_packets or 0) - (first.slowpath_packets or 0)
    fast = (last.fastpath_packets or 0) - (first.fastpath_packets or 0)
    switch = max(0, entered - punted)
    return {"packets_into_switch": entered, "packet_in": punted, "switch_packets": switch, "slowpath_packets": slow,
            "fastpath_packets": fast, "switch_share": round(switch / entered, 4) if entered else None}


#: (proto, sport, dport) as packets arrive at the receiver -> {DSCP name: packets}
DscpSeen = dict[tuple[str, int, int], dict[str, int]]


def dscp_seen(capture: dict[str, Any] | None) -> DscpSeen:
    """The receiver capture's summary (traffic.DSCP_CAPTURE) by flow, DSCP values by name (cs3, ef, 0...)."""
    from runtime.actions import dscp_name

    out: DscpSeen = {}
    for proto, sport, dport, dscp, n in (capture or {}).get("dscp_seen", []):
        by = out.setdefault((str(proto), int(sport), int(dport)), {})
        name = dscp_name(int(dscp))
        by[name] = by.get(name, 0) + int(n)
    return out


def flow_entry(track: FlowTrack, end_t: float, seen: DscpSeen | None = None) -> dict[str, Any]:
    states = track.states()
    rec = track.last_record or {}
    proto, _src, sport, _dst, dport = track.key
    return {
        "flow": track.label,
        "proto": track.proto,
        "flow_id": track.flow_id,
        "timeline": [[t, s] for t, s in track.timeline],
        "path": track.path(),
        "reached_hw_offload": "hw_offloaded" in states,
        "offload_at": track.first_time("offloaded"),
        "seen_in_software_offload": "offloaded" in states,
        "hw_offload_at": track.first_time("hw_offloaded"),
        "left_flowtable_at": track.first_time("left"),
        "ended_at": track.first_time("ended"),
        "final_state": track.state,
        "still_in_flowtable_at_end": track.state in ("offloaded", "hw_offloaded", "closing", "teardown", "dying"),
        "switch_counted_packets": [rec.get("orig", {}).get("packets"), rec.get("reply", {}).get("packets")]
        if rec else None,
        "observed_until": end_t,
        # DSCP of the original direction's packets as its receiver got them (masquerade keeps the port here),
        # with counts: every packet of a marked flow should carry the mark, whichever path carried it
        "dscp_at_receiver": (seen or {}).get((proto, sport, dport), {}),
        "statements": (rec.get("orig") or {}).get("statements", "") if rec else "",
    }


def build_report(meta: dict[str, Any], tracker: Tracker, transfers: list[dict[str, Any]],
                 traffic: dict[str, Any], capture: dict[str, Any] | None = None,
                 named_counters: dict[str, Any] | None = None) -> dict[str, Any]:
    seen = dscp_seen(capture)
    flows = [flow_entry(t, tracker.end_t, seen) for t in sorted(tracker.tracks.values(), key=lambda x: x.first_seen)]
    tot = totals(tracker.samples)
    offloaded = [f for f in flows if f["reached_hw_offload"]]
    by_name = {x["name"]: x for x in transfers}
    base, off = by_name.get("baseline", {}), by_name.get("offloaded", {})
    summary = {
        "flows_seen": len(flows),
        "flows_hw_offloaded": len(offloaded),
        "tcp_hw_offloaded": any(f["proto"] == "tcp" for f in offloaded),
        "udp_hw_offloaded": any(f["proto"] == "udp" for f in offloaded),
        "switch_share": tot.get("switch_share"),
        "baseline_mbps": base.get("mbps"),
        "baseline_stayed_on_slow_path": base.get("path") is not None and "[OFFLOAD]" not in (base.get("path") or ""),
        "offloaded_mbps": off.get("mbps"),
        "offloaded_mbps_before_hw_offload": off.get("mbps_before_hw_offload"),
        "offloaded_mbps_after_hw_offload": off.get("mbps_after_hw_offload"),
        "status_errors": tracker.errors,
        "receiver_capture_drops": (capture or {}).get("drops"),
    }
    return {
        **meta,
        "sample_interval_s": meta.get("sample_interval_s"),
        "summary": summary,
        "totals": tot,
        "flows": flows,
        "throughput": transfers,
        "traffic": traffic,
        "named_counters": named_counters or {},
        "samples": [asdict(s) for s in tracker.samples],
    }


def unmarked(report: dict[str, Any]) -> list[str]:
    """Flows with a DSCP statement whose receiver got packets without that mark: one line each."""
    out = []
    for f in report["flows"]:
        want = next((st.split("@")[0].removeprefix("dscp=") for st in f.get("statements", "").split(",")
                     if st.startswith("dscp=")), None)
        seen = f.get("dscp_at_receiver") or {}
        other = {k: v for k, v in seen.items() if k != want}
        if want is not None and other:
            out.append(f"{f['flow']}: marked dscp={want} by the policy, but its receiver got "
                       f"{', '.join(f'{v} packets with dscp={k}' for k, v in other.items())}")
    return out


def write_report(report: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(report, indent=2) + "\n")


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}{unit}"
    return f"{v}{unit}"


def summary_table(report: dict[str, Any]) -> str:
    lines = ["", "flows (t in s; from the controller's flowtable and conntrack):"]
    lines.append(f"  {'flow':<44} {'[OFFLOAD]':>9} {'[HW]':>6} {'left':>6} {'ended':>6}  path")
    for f in report["flows"]:
        path = f["path"] + ("  (still in flowtable at end)" if f["still_in_flowtable_at_end"] else "")
        lines.append(f"  {f['flow']:<44} {_fmt(f['offload_at']):>9} {_fmt(f['hw_offload_at']):>6} "
                     f"{_fmt(f['left_flowtable_at']):>6} {_fmt(f['ended_at']):>6}  {path}")
    tot = report["totals"]
    share = tot.get("switch_share")
    if any(f["reached_hw_offload"] and not f["seen_in_software_offload"] for f in report["flows"]):
        lines.append(f"  (a path without [OFFLOAD]: the software flowtable held the flow for less than the "
                     f"{report.get('sample_interval_s')} s sampling interval before the switch took it)")
    lines.append("")
    lines.append(f"packets: {_fmt(tot.get('packets_into_switch'))} into the switch; forwarded by the switch "
                 f"{_fmt(tot.get('switch_packets'))}" + (f" ({100 * share:.1f}%)" if share is not None else "")
                 + f", software fast path {_fmt(tot.get('fastpath_packets'))}, slow path {_fmt(tot.get('slowpath_packets'))}")
    for x in report["throughput"]:
        what = {"baseline": "slow-path baseline (policy skip)", "offloaded": "offloaded transfer"}.get(x["name"], x["name"])
        line = f"throughput, {what}: {_fmt(x['mbps'], ' Mbit/s')} over {_fmt(x['seconds'], ' s')}"
        if x["hw_offload_at"] is not None:
            line += (f"; before [HW_OFFLOAD] {_fmt(x['mbps_before_hw_offload'], ' Mbit/s')}, after "
                     f"{_fmt(x['mbps_after_hw_offload'], ' Mbit/s')} (at {x['hw_offload_at']:.1f} s)")
        lines.append(line)
        if x.get("note"):
            lines.append(f"  ({x['note']})")
    tr = report["traffic"]
    if tr.get("udp"):
        u = tr["udp"]
        lines.append(f"udp exchange: {_fmt(u.get('sent'))} sent, {_fmt(u.get('received'))} echoed")
    for name, p in (tr.get("ping") or {}).items():
        lines.append(f"ping {name} -> wan: {p}")
    for f in report["flows"]:
        if f.get("statements"):
            seen = ", ".join(f"{n} x dscp={k}" for k, n in (f.get("dscp_at_receiver") or {}).items()) or "none"
            lines.append(f"statements {f['flow']}: {f['statements']}; at the receiver: {seen}")
    for name, v in (report.get("named_counters") or {}).items():
        lines.append(f"counter {name}: {v.get('packets')} packets, {v.get('bytes')} bytes (every path)")
    return "\n".join(lines)


def state_label(state: str) -> str:
    return LABELS.get(state, state)
