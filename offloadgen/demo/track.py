"""Sampling the running controller: each flow's state over time, and packets per second on each path.

The controller is asked over its status socket (the same interface as `offloadgen flows/stats`), so the demo
sees what a user would see. A connection is keyed by its original tuple; it is on the slow path while only
conntrack knows it, in the flowtable while `flows` lists it (its state there: offloaded, hw_offloaded,
closing, teardown, dying), "left" once it is out of the flowtable but still in conntrack, and "ended" once
conntrack dropped it too. States shorter than the sampling interval can be missed; the report says the interval.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.status import StatusError, query

PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}
FLOW_STATES = ("offloaded", "hw_offloaded", "closing", "teardown", "dying")
LABELS = {"slow_path": "slow path", "offloaded": "[OFFLOAD]", "hw_offloaded": "[HW_OFFLOAD]", "closing": "closing",
          "teardown": "teardown", "dying": "dying", "left": "left flowtable", "ended": "ended"}

Key = tuple[str, str, int, str, int]  # proto, src, sport, dst, dport (original direction)


@dataclass
class FlowTrack:
    key: Key
    first_seen: float
    timeline: list[tuple[float, str]] = field(default_factory=list)
    flow_id: int | None = None
    # per state: the last sample time at which the flow was not yet in it (the state began after this)
    not_before: dict[str, float] = field(default_factory=dict)
    last_record: dict[str, Any] | None = None  # the last `flows` record (packet counts per direction)

    @property
    def proto(self) -> str:
        return self.key[0]

    @property
    def label(self) -> str:
        proto, src, sport, dst, dport = self.key
        if proto in ("tcp", "udp"):
            return f"{proto} {src}:{sport} -> {dst}:{dport}"
        return f"{proto} {src} -> {dst}"

    @property
    def state(self) -> str | None:
        return self.timeline[-1][1] if self.timeline else None

    def states(self) -> list[str]:
        return [s for _, s in self.timeline]

    def first_time(self, state: str) -> float | None:
        return next((t for t, s in self.timeline if s == state), None)

    def path(self) -> str:
        return " -> ".join(LABELS.get(s, s) for s in self.states())

    def set(self, t: float, state: str, prev_t: float | None = None) -> bool:
        if self.state == state:
            return False
        self.timeline.append((round(t, 3), state))
        if prev_t is not None:
            self.not_before.setdefault(state, round(prev_t, 3))
        return True


@dataclass
class Sample:
    t: float
    rx_packets: int  # packets the hosts sent into the switch (switch-side RX counters)
    packet_in: int | None
    slowpath_packets: int | None
    fastpath_packets: int | None
    flows: int | None
    hw_offloaded: int | None
    slow_pps: float | None = None
    fast_pps: float | None = None
    switch_pps: float | None = None
    total_pps: float | None = None


def _key(proto: Any, src: Any, sport: Any, dst: Any, dport: Any) -> Key:
    name = PROTO_NAMES.get(proto, str(proto)) if isinstance(proto, int) else str(proto)
    if name not in ("tcp", "udp"):
        sport = dport = 0  # an ICMP echo id is not part of what a reader follows
    return (name, str(src), int(sport or 0), str(dst), int(dport or 0))


class Tracker:
    """Polls flows, conntrack and stats; keeps per-flow timelines and per-sample rates; reports changes."""

    def __init__(self, socket_path: Path, rx_packets: Callable[[], int], t0: float,
                 on_change: Callable[[float, FlowTrack], None] | None = None) -> None:
        self.socket_path = socket_path
        self.rx_packets = rx_packets
        self.t0 = t0
        self.on_change = on_change
        self.tracks: dict[Key, FlowTrack] = {}
        self.samples: list[Sample] = []
        self.errors: list[str] = []
        self.end_t = 0.0
        self._changed: dict[Key, FlowTrack] = {}
        self._prev_t: float | None = None

    def now(self) -> float:
        return time.monotonic() - self.t0

    def _ask(self, cmd: str) -> Any:
        try:
            return query(cmd, self.socket_path, timeout=5.0)
        except StatusError as exc:
            if not self.errors or self.errors[-1] != str(exc):
                self.errors.append(str(exc))
            return None

    def _track(self, key: Key, t: float) -> FlowTrack:
        track = self.tracks.get(key)
        if track is None:
            track = self.tracks[key] = FlowTrack(key, round(t, 3))
        return track

    def _set(self, track: FlowTrack, t: float, state: str) -> None:
        if track.set(t, state, self._prev_t):
            self._changed[track.key] = track

    def sample(self) -> Sample:
        rx = self.rx_packets()
        stats = self._ask("stats")
        conns = self._ask("conntrack")
        flows = self._ask("flows")
        t = self.now()
        ctl = (stats or {}).get("controller", {}) if isinstance(stats, dict) else {}
        ft = (stats or {}).get("flowtable", {}) if isinstance(stats, dict) else {}
        s = Sample(round(t, 3), rx, ctl.get("packet_in"), ctl.get("slowpath_packets"), ctl.get("fastpath_packets"),
                   ft.get("flows"), ft.get("hw_offloaded"))
        if self.samples:
            # rates over the last ~0.5 s (two intervals), so that 2-per-second pings do not read as 0, 25, 0, 25
            prev = self.samples[-2] if len(self.samples) >= 2 else self.samples[-1]
            dt = s.t - prev.t
            if dt > 0:
                s.total_pps = round((s.rx_packets - prev.rx_packets) / dt, 1)
                if s.slowpath_packets is not None and prev.slowpath_packets is not None:
                    s.slow_pps = round((s.slowpath_packets - prev.slowpath_packets) / dt, 1)
                if s.fastpath_packets is not None and prev.fastpath_packets is not None:
                    s.fast_pps = round((s.fastpath_packets - prev.fastpath_packets) / dt, 1)
                if s.packet_in is not None and prev.packet_in is not None:
                    # what entered the switch and was not punted to the controller: forwarded by the switch
                    s.switch_pps = round(max(0.0, s.total_pps - (s.packet_in - prev.packet_in) / dt), 1)
        self.samples.append(s)
        if conns is not None and flows is not None:
            self._update_flows(t, conns, flows)
            self._prev_t = t
        for track in self._changed.values():
            if self.on_change is not None:
                self.on_change(t, track)
        self._changed.clear()
        return s

    def _update_flows(self, t: float, conns: list[dict[str, Any]], flows: list[dict[str, Any]]) -> None:
        in_ct: set[Key] = set()
        for c in conns:
            o = c.get("original", {})
            key = _key(c.get("proto"), o.get("src"), o.get("sport"), o.get("dst"), o.get("dport"))
            in_ct.add(key)
            self._track(key, t)
        in_ft: dict[Key, dict[str, Any]] = {}
        for f in flows:
            o = f.get("orig", {})
            key = _key(f.get("proto"), o.get("src"), o.get("sport"), o.get("dst"), o.get("dport"))
            in_ft[key] = f
        for key in in_ct | set(in_ft):
            track = self._track(key, t)
            rec = in_ft.get(key)
            if rec is not None:
                track.flow_id = rec.get("id")
                track.last_record = rec
                if track.state is None:
                    self._set(track, t, "slow_path")  # every connection starts on the slow path
                self._set(track, t, str(rec.get("state")))
            elif track.state is None or track.state == "slow_path":
                self._set(track, t, "slow_path")
            elif track.state != "ended":
                self._set(track, t, "left")
        for key, track in self.tracks.items():
            if key not in in_ct and key not in in_ft and track.state not in (None, "ended"):
                if track.state in FLOW_STATES:
                    self._set(track, t, "left")
                self._set(track, t, "ended")

    def finish(self) -> None:
        """Close every timeline at the last sample, so a plot knows where the last segment stops."""
        if self.samples:
            self.end_t = self.samples[-1].t
