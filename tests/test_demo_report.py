"""The demo's report of policy statements, without Mininet: the receiver capture's summary becomes each
flow's DSCP counts in report.json, and a marked flow whose receiver got unmarked packets is a failed run."""

from __future__ import annotations

from typing import Any

from offloadgen.demo import report
from offloadgen.demo.track import FlowTrack, Tracker


def _report(capture: dict[str, Any], statements: str) -> dict[str, Any]:
    tracker = Tracker.__new__(Tracker)  # the report reads only these attributes of a run's tracker
    marked = FlowTrack(("tcp", "10.0.2.10", 40002, "192.0.2.20", 5002), 1.0, timeline=[(1.0, "hw_offloaded")])
    marked.last_record = {"orig": {"packets": 10, "statements": statements}, "reply": {"packets": 5}}
    plain = FlowTrack(("tcp", "10.0.1.10", 40001, "192.0.2.20", 5001), 0.5, timeline=[(0.5, "slow_path")])
    tracker.tracks = {marked.key: marked, plain.key: plain}
    tracker.samples = []
    tracker.end_t = 9.0
    tracker.errors = 0
    return report.build_report({}, tracker, [], {}, capture, {"bulk": {"packets": 15, "bytes": 900}})


def test_dscp_seen_at_the_receiver_per_flow() -> None:
    capture = {"dscp_seen": [["tcp", 40002, 5002, 24, 7], ["tcp", 40001, 5001, 0, 30], ["udp", 5353, 5353, 0, 4]],
               "drops": 0, "done": True}
    rep = _report(capture, "dscp=cs3@switch,counter=bulk@switch")
    by_flow = {f["flow"]: f for f in rep["flows"]}
    marked = by_flow["tcp 10.0.2.10:40002 -> 192.0.2.20:5002"]
    assert marked["dscp_at_receiver"] == {"cs3": 7} and marked["statements"].startswith("dscp=cs3@switch")
    assert by_flow["tcp 10.0.1.10:40001 -> 192.0.2.20:5001"]["dscp_at_receiver"] == {"cs0": 30}
    assert rep["named_counters"] == {"bulk": {"packets": 15, "bytes": 900}}
    assert rep["summary"]["receiver_capture_drops"] == 0
    assert report.unmarked(rep) == []
    text = report.summary_table(rep)
    assert "at the receiver: 7 x dscp=cs3" in text and "counter bulk: 15 packets" in text


def test_unmarked_packets_of_a_marked_flow_fail_the_run() -> None:
    capture = {"dscp_seen": [["tcp", 40002, 5002, 24, 7], ["tcp", 40002, 5002, 0, 2]], "drops": 0}
    rep = _report(capture, "dscp=cs3@software")
    assert report.unmarked(rep) == ["tcp 10.0.2.10:40002 -> 192.0.2.20:5002: marked dscp=cs3 by the policy, but "
                                    "its receiver got 2 packets with dscp=cs0"]
