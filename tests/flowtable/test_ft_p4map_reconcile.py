"""Flow directions as P4 entries (against the generated program's P4Info), reconciliation decisions, and the
status snapshots and their text."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from ftutil import FakeClock, FakeConn, FakeSwitch, directions, make_table, nat_tuples, offer

from runtime.actions import Count, DecTtl, Output, SetDscp, SetEthDst, SetEthSrc, SetVlan, flatten
from runtime.flowtable.core import Flow, FlowTable
from runtime.flowtable.model import FlowFlag, FlowTuple
from runtime.flowtable.offload import OffloadEngine, entry_key, flow_key
from runtime.flowtable.p4map import (
    FlowUpdate,
    Op,
    PipelineCaps,
    SwitchEntry,
    Unsupported,
    caps_from_p4info,
    decode_entry,
    entry_for,
    match_of,
)
from runtime.flowtable.reconcile import EntryPair, plan_reconcile
from runtime.flowtable.status import FlowRecord, StatsRecord, format_flows, format_stats, snapshot_flows, snapshot_stats

F = FlowFlag
REPO = Path(__file__).resolve().parents[2]


def _p4info(tmp: Path, profile: str) -> object:
    from google.protobuf import text_format
    from p4.config.v1 import p4info_pb2
    proc = subprocess.run([sys.executable, "-m", "offloadgen.cli", "build", "--profile", profile, "--out", str(tmp)],
                          capture_output=True, text=True, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr
    info = p4info_pb2.P4Info()
    text_format.Parse((tmp / "p4info.txtpb").read_text(), info)
    return info


@pytest.fixture(scope="module")
def default_caps(tmp_path_factory: pytest.TempPathFactory) -> PipelineCaps:
    return caps_from_p4info(_p4info(tmp_path_factory.mktemp("default"), "default"))


def test_caps_from_generated_p4info(default_caps: PipelineCaps, tmp_path: Path) -> None:
    assert dict(default_caps.tables) == {4: "flow_v4", 6: "flow_v6"}
    assert default_caps.nat_tables == {"flow_v4"} and default_caps.idle_timeout == {"flow_v4", "flow_v6"}
    assert default_caps.sizes == {"flow_v4": 65536, "flow_v6": 65536}
    assert default_caps.stmt_tables == {"flow_v4", "flow_v6"} and default_caps.dscp and default_caps.counter_slots == 16
    assert default_caps.statements() == ("dscp", "counter")
    vlan = caps_from_p4info(_p4info(tmp_path, "vlan"), port_vlans={3: 100})
    assert dict(vlan.tables) == {4: "flow_v4"} and vlan.idle_timeout == frozenset() and vlan.sizes == {"flow_v4": 256}
    assert vlan.stmt_tables == {"flow_v4"} and vlan.statements() == ("vlan",), "the vlan profile can retag only"


def test_statements_become_the_entry_or_keep_the_flow_in_software(default_caps: PipelineCaps) -> None:
    """DSCP is set_dscp/dscp of offload_nat_stmt / offload_stmt, a named counter its index in stmt_counter. A
    switch that cannot do a statement gets no entry at all, with a message naming the statement."""
    caps = default_caps.with_counter_names(["mail", "web"])
    stmts = (SetDscp(24), Count("web"))
    o, _r = directions(*nat_tuples(), statements=stmts)
    e = entry_for(o.tuple, o.rewrite, caps)
    assert e.action == "offload_nat_stmt" and e.params["saddr"] == 0xC0000201
    assert (e.params["set_dscp"], e.params["dscp"], e.params["counter_idx"]) == (1, 24, 2)
    d = decode_entry(SwitchEntry(e.table, e.match, e.action, e.params), caps)
    assert d is not None and d.dscp == 24 and d.counter_idx == 2 and d.leaves_as == o.leaves_as()
    six = FlowTuple.make(1, "2001:db8::1", "2001:db8::2", "udp", 1, 2)
    sd, _ = directions(six, FlowTuple.make(2, "2001:db8::2", "2001:db8::1", "udp", 2, 1), statements=(Count("mail"),))
    e6 = entry_for(sd.tuple, sd.rewrite, caps)
    assert e6.action == "offload_stmt" and (e6.params["set_dscp"], e6.params["counter_idx"]) == (0, 1)
    no_dscp = dataclasses.replace(caps, dscp=False)
    with pytest.raises(Unsupported, match=r"^dscp=cs3: the switch cannot set DSCP in flow_v4"):
        entry_for(o.tuple, o.rewrite, no_dscp)
    assert "dscp" not in entry_for(sd.tuple, sd.rewrite, no_dscp).params
    no_counter = dataclasses.replace(caps, counter_slots=0)
    with pytest.raises(Unsupported, match=r"^counter=web: the switch has no named counters"):
        entry_for(o.tuple, o.rewrite, no_counter)
    with pytest.raises(Unsupported, match=r"^counter=web: the switch holds 1 named counters"):
        entry_for(o.tuple, o.rewrite, dataclasses.replace(default_caps, counter_slots=1).with_counter_names(["mail", "web"]))
    plain, _ = directions(*nat_tuples())
    assert entry_for(plain.tuple, plain.rewrite, no_dscp).action == "offload_nat"


def test_vlan_retag_on_tagged_egress_only() -> None:
    """set = { vlan = 200 }: the entry of the direction leaving the tagged port carries set_vid/vid; the other
    direction (untagged egress) has nothing to retag; a switch without retag keeps the flow in software."""
    caps = PipelineCaps(port_vlans={4: 100}, dscp=False, counter_slots=0, vlan_retag=True)
    o, r = directions(*nat_tuples(), port_vlans={4: 100}, statements=(SetVlan(200),))
    e = entry_for(o.tuple, o.rewrite, caps)
    assert e.action == "offload_nat_stmt" and (e.params["set_vid"], e.params["vid"]) == (1, 200)
    d = decode_entry(SwitchEntry(e.table, e.match, e.action, e.params), caps)
    assert d is not None and d.vlan_retag == 200
    back = entry_for(r.tuple, r.rewrite, caps)
    assert back.action == "offload_nat", "leaving untagged: the retag has nothing to do"
    with pytest.raises(Unsupported, match=r"^vlan=200: the switch cannot retag on egress port 4"):
        entry_for(o.tuple, o.rewrite, dataclasses.replace(caps, vlan_retag=False))


def test_unsupported_statement_stays_in_software_counted_and_shown() -> None:
    clock = FakeClock()
    ft, eng, sw = make_table(clock, caps=PipelineCaps(dscp=False).with_counter_names(["web"]))
    o, r = directions(*nat_tuples(), statements=(SetDscp(24), Count("web")))
    _, flow = ft.offer(FakeConn(), o, r, seen_reply=True, tcp_established=True)
    assert flow is not None
    eng.run_once()
    assert not flow.hw_offloaded and not sw.entries, "never offloaded without its statement"
    assert ft.counters.hw_unsupported == 1
    [rec] = snapshot_flows(ft)
    assert rec.tag == "[OFFLOAD]" and rec.last_error.startswith("dscp=cs3")
    assert rec.orig.statements == "dscp=cs3@software,counter=web@software"
    ft2, eng2, _sw2 = make_table(clock, caps=PipelineCaps().with_counter_names(["web"]))
    _, flow2 = ft2.offer(FakeConn(), o, r, seen_reply=True, tcp_established=True)
    eng2.run_once()
    assert flow2 is not None and flow2.hw_offloaded
    [rec2] = snapshot_flows(ft2)
    assert rec2.reply.statements == "dscp=cs3@switch,counter=web@switch"
    assert "orig_statements=dscp=cs3@switch,counter=web@switch" in format_flows([rec2])


def test_entry_for_nat_and_plain(default_caps: PipelineCaps) -> None:
    o, _r = directions(*nat_tuples())
    e = entry_for(o.tuple, o.rewrite, default_caps, 30_000_000_000)
    assert (e.op, e.table, e.action) == (Op.INSERT, "flow_v4", "offload_nat")
    assert e.params == {"port": 4, "smac": 0x020000000104, "dmac": 0x02000000FE01, "saddr": 0xC0000201,
                        "daddr": 0x08080808, "sport": 60000, "dport": 80}
    assert e.idle_timeout_ns == 30_000_000_000
    d = decode_entry(SwitchEntry(e.table, e.match, e.action, e.params), default_caps)
    assert d is not None and d.tuple == o.tuple and d.out_port == 4 and d.leaves_as == o.leaves_as()
    six = FlowTuple.make(1, "2001:db8::1", "2001:db8::2", "udp", 1, 2)
    back = FlowTuple.make(2, "2001:db8::2", "2001:db8::1", "udp", 2, 1)
    sd, _ = directions(six, back)
    e6 = entry_for(sd.tuple, sd.rewrite, default_caps)
    assert e6.table == "flow_v6" and e6.action == "offload" and set(e6.params) == {"port", "smac", "dmac"}
    assert e6.match["src_addr"] == 0x20010DB8000000000000000000000001


def test_unsupported_shapes(default_caps: PipelineCaps) -> None:
    t = FlowTuple.make(1, "10.0.0.1", "10.0.0.2", "tcp", 1, 2)
    with pytest.raises(Unsupported, match="TTL"):
        entry_for(t, flatten((SetEthSrc(b"\x02" * 6), SetEthDst(b"\x04" * 6), Output(2))), default_caps)
    with pytest.raises(Unsupported, match="MACs"):
        entry_for(t, flatten((DecTtl(), Output(2))), default_caps)
    o, _r = directions(*nat_tuples(), port_vlans={4: 100})
    with pytest.raises(Unsupported, match="VLAN push"):
        entry_for(o.tuple, o.rewrite, default_caps)  # the pipeline has no VLAN on port 4
    vcaps = PipelineCaps(port_vlans={4: 100})
    assert entry_for(o.tuple, o.rewrite, vcaps).params["port"] == 4
    with pytest.raises(Unsupported, match="no IPv6"):
        entry_for(FlowTuple.make(1, "::1", "::2", "tcp", 1, 2), flatten((DecTtl(), Output(2))),
                  PipelineCaps(tables={4: "flow_v4"}))


def _installed(clock: FakeClock, n: int = 2) -> tuple[FlowTable, OffloadEngine, FakeSwitch, list[Flow]]:
    ft, eng, sw = make_table(clock)
    flows = []
    for i in range(n):
        _, f = offer(ft, sport=1000 + i)
        assert f is not None
        flows.append(f)
    eng.run_once()
    assert all(f.hw_offloaded for f in flows)
    return ft, eng, sw, flows


def test_reconcile_adopt_reinstall_delete() -> None:
    clock = FakeClock()
    _ft, _eng, sw, (good, missing) = _installed(clock)
    caps = PipelineCaps()
    entries = sw.switch_entries()
    # the switch lost one direction of `missing`, and holds an entry nobody knows
    lost = entry_for(missing.dirs[1].tuple, missing.dirs[1].rewrite, caps)
    entries = [e for e in entries if e.key() != lost.key()]
    stranger = SwitchEntry("flow_v4", {"in_port": 3, "src_addr": 1, "dst_addr": 2, "proto": 17, "src_port": 5,
                                       "dst_port": 6}, "offload", {"port": 1, "smac": 1, "dmac": 2})
    plan = plan_reconcile([*entries, stranger], [good, missing], caps)
    assert plan.adopt == [good] and plan.reinstall == [missing] and plan.rebuild == []
    assert [d.key() for d in plan.delete] == [stranger.key()]


def test_reconcile_stale_action_and_closing_flow() -> None:
    clock = FakeClock()
    _ft, _eng, sw, (stale, closing) = _installed(clock)
    caps = PipelineCaps()
    entries = []
    for e in sw.switch_entries():
        if e.match["src_port"] == stale.dirs[0].tuple.sport and e.match["in_port"] == 1:
            e = SwitchEntry(e.table, e.match, e.action, {**e.params, "port": 3})  # says something else
        entries.append(e)
    closing.flags |= F.CLOSING
    plan = plan_reconcile(entries, [stale, closing], caps)
    assert plan.adopt == [] and plan.reinstall == [stale]
    assert len(plan.delete) == 3, "the stale direction, and both entries of the closing flow"


def test_switch_restart_reinstalls_everything_and_apply() -> None:
    clock = FakeClock()
    _ft, eng, sw, flows = _installed(clock, 3)
    sw.entries.clear()
    plan = plan_reconcile([], flows, PipelineCaps())
    assert plan.reinstall == flows and not plan.delete and not plan.adopt
    eng.apply_reconcile(plan)
    assert all(not f.hw_offloaded for f in flows), "no [HW_OFFLOAD] flow the switch lacks"
    eng.run_once()
    assert all(f.hw_offloaded for f in flows) and len(sw.entries) == 6


def test_reconnect_with_everything_in_place_adopts() -> None:
    clock = FakeClock()
    _ft, eng, sw, flows = _installed(clock, 2)
    for f in flows:  # as if a controller restarted and rebuilt these flows from conntrack
        f.flags &= ~F.HW_OFFLOADED
        f.hw_installed = 0
    plan = plan_reconcile(sw.switch_entries(), flows, PipelineCaps())
    assert plan.adopt == flows and plan.empty
    eng.apply_reconcile(plan)
    assert all(f.hw_offloaded and f.hw_installed == 3 for f in flows)


def test_unknown_pair_is_a_rebuild_candidate_or_deleted() -> None:
    clock = FakeClock()
    caps = PipelineCaps()
    o, r = directions(*nat_tuples())
    a = entry_for(o.tuple, o.rewrite, caps)
    b = entry_for(r.tuple, r.rewrite, caps)
    entries = [SwitchEntry(u.table, u.match, u.action, u.params) for u in (a, b)]
    seen: list[EntryPair] = []

    def can(pair: EntryPair) -> bool:
        seen.append(pair)
        return True

    plan = plan_reconcile(entries, [], caps, can_rebuild=can)
    assert len(plan.rebuild) == 1 and not plan.delete
    pair = plan.rebuild[0]
    assert {pair.a_decoded.tuple, pair.b_decoded.tuple} == {o.tuple, r.tuple}
    plan = plan_reconcile(entries, [], caps, can_rebuild=lambda p: False)
    assert not plan.rebuild and len(plan.delete) == 2
    plan = plan_reconcile(entries[:1], [], caps, can_rebuild=can)
    assert not plan.rebuild and len(plan.delete) == 1, "half a pair is deleted"
    del clock


def test_status_snapshots_and_text() -> None:
    clock = FakeClock()
    ft, eng, _sw = make_table(clock, capacity=2)
    conn = FakeConn()
    _, f1 = offer(ft, sport=1000, conn=conn)
    _, f2 = offer(ft, sport=1001, proto="udp")
    assert f1 is not None and f2 is not None
    eng.run_once()
    f1.sw_packets[0] = 3
    f1.sw_bytes[0] = 180
    f1.hw_packets[1] = 2
    f1.hw_bytes[1] = 120
    clock.advance(5)
    recs = snapshot_flows(ft)
    assert [r.tag for r in recs] == ["[HW_OFFLOAD]", "[OFFLOAD]"]
    assert recs[0].timeout_s == 25 and recs[0].orig.packets == 3 and recs[0].reply.bytes == 120
    assert FlowRecord.from_dict(recs[0].to_dict()) == recs[0]
    text = format_flows(recs)
    first = text.splitlines()[0]
    assert first.startswith("tcp      6 25 ESTABLISHED src=10.0.0.1 dst=8.8.8.8 sport=1000 dport=80 packets=3 bytes=180 "
                            "src=8.8.8.8 dst=192.0.2.1 sport=80 dport=21000 packets=2 bytes=120 [HW_OFFLOAD]")
    assert "snat=192.0.2.1" in first and "out=4" in first
    assert text.splitlines()[1].startswith("udp      17 25 src=10.0.0.1")
    assert text.endswith("2 flow entries have been shown.")
    d = eng.depths()
    st = snapshot_stats(ft, queue_depths=(d.wq_add, d.wq_del, d.wq_stats), installed=eng.installed_entries(),
                        sizes={"flow_v4": 2}, orphans=len(eng.orphans))
    assert st.flows == 2 and st.hw_offloaded == 1 and st.offloaded == 1 and st.occupancy == {"flow_v4": (2, 2)}
    assert StatsRecord.from_dict(st.to_dict()) == st
    out = format_stats(st)
    assert out.splitlines()[:2] == ["wq_add   wq_del   wq_stats", "       0        0        0"]
    assert "hw_add_table_full 1" in out and "table flow_v4 2/2 (100.0 %)" in out


def test_delete_update_shape() -> None:
    u = FlowUpdate(Op.INSERT, "flow_v4", {"in_port": 1}, "offload", {"port": 2}, 5)
    assert u.with_op(Op.DELETE) == FlowUpdate(Op.DELETE, "flow_v4", {"in_port": 1})


@pytest.mark.parametrize("t", [
    FlowTuple(1, bytes([10, 0, 1, 10]), bytes([192, 0, 2, 20]), 6, 40000, 80),
    FlowTuple(4, bytes(4), bytes([255] * 4), 17, 0, 65535),
    FlowTuple(2, bytes.fromhex("20010db8000000000000000000000001"), bytes(16), 6, 1, 443),
])
def test_flow_key_is_the_entry_key_of_the_flows_match(t: FlowTuple, default_caps: PipelineCaps) -> None:
    """The stats pass looks flows up by flow_key; the bulk read keys entries by entry_key: they must agree."""
    assert flow_key(t, default_caps) == entry_key(*match_of(t, default_caps))
