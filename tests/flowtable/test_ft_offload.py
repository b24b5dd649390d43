"""Hardware offload work: pairs all-or-nothing, full tables, one pending op, stats refresh, idle notices."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from ftutil import FakeClock, FakeConn, FakeSwitch, _Entry, directions, make_table, nat_tuples, offer

from runtime.flowtable.core import Flow, FlowTable, HwStats, IdleVerdict
from runtime.flowtable.model import NS, Dir, FlowFlag
from runtime.flowtable.offload import OffloadEngine
from runtime.flowtable.p4map import Code, FlowUpdate, Op, PipelineCaps, UpdateResult, delete_for, entry_for
from runtime.flowtable.policy import FlowtableConfig

F = FlowFlag


def test_pair_installed_in_one_batch_then_hw_offload() -> None:
    clock = FakeClock()
    ft, eng, sw = make_table(clock)
    _, f1 = offer(ft, sport=1000)
    _, f2 = offer(ft, sport=1001)
    assert f1 is not None and f2 is not None
    assert f1.flags & F.HW and f1.flags & F.HW_PENDING and not f1.hw_offloaded
    assert eng.depths().wq_add == 2
    assert eng.run_once() == 2
    assert len(sw.batches) == 1 and len(sw.batches[0]) == 4, "both flows, both directions, one Write"
    assert f1.hw_offloaded and f2.hw_offloaded and f1.state == "hw_offloaded"
    assert not f1.flags & F.HW_PENDING and f1.hw_installed == 0b11
    assert len(sw.entries) == 4 and ft.counters.hw_add_ok == 2
    e = sw.batches[0][0]
    assert e.table == "flow_v4" and e.action == "offload_nat" and e.idle_timeout_ns == 30 * NS
    assert e.match == {"in_port": 1, "src_addr": 0x0A000001, "dst_addr": 0x08080808, "proto": 6, "src_port": 1000,
                       "dst_port": 80}
    assert e.params["saddr"] == 0xC0000201 and e.params["sport"] == 21000 and e.params["port"] == 4


@pytest.mark.parametrize("code", [Code.RESOURCE_EXHAUSTED, Code.UNKNOWN])
def test_second_direction_refused_rolls_back_the_first(code: Code) -> None:
    clock = FakeClock()
    ft, eng, sw = make_table(clock)
    _, flow = offer(ft)
    assert flow is not None
    reply_port = flow.dirs[1].tuple.in_port
    sw.reject = lambda u: UpdateResult(code, "no room") if u.op is Op.INSERT and u.match["in_port"] == reply_port else None
    eng.run_once()
    assert sw.entries == {}, "the original direction was deleted again"
    assert [u.op for u in sw.batches[1]] == [Op.DELETE]
    assert not flow.hw_offloaded and flow.flags & F.HW_REFRESH and flow.hw_installed == 0
    assert flow.state == "offloaded", "still on the software path"
    assert ft.counters.hw_rollbacks == 1 and ft.counters.hw_add_table_full == 1
    assert "reply" in flow.last_error
    # retried after the delay when software-path traffic refreshes it
    sw.reject = None
    ft.refresh(flow)
    assert eng.depths().wq_add == 0, "not before the retry delay"
    clock.advance(1.5)
    ft.refresh(flow)
    assert eng.depths().wq_add == 1 and ft.counters.hw_add_retries == 1
    eng.run_once()
    assert flow.hw_offloaded and len(sw.entries) == 2


@pytest.mark.parametrize("full_code", [Code.RESOURCE_EXHAUSTED, Code.UNKNOWN])
def test_full_table_leaves_flow_in_software_counted_and_retried(full_code: Code) -> None:
    clock = FakeClock()
    ft, eng, sw = make_table(clock, capacity=3, full_code=full_code)
    _, f1 = offer(ft, sport=1000)
    _, f2 = offer(ft, sport=1001)
    assert f1 is not None and f2 is not None
    eng.run_once()
    assert f1.hw_offloaded and not f2.hw_offloaded
    assert len(sw.entries) == 2, "f2's first direction took the last slot and was rolled back"
    assert ft.counters.hw_add_table_full == 1 and ft.counters.hw_rollbacks == 1
    assert ft.get(f2.id) is f2 and ft.lookup(f2.dirs[0].tuple) is not None, "never lost"
    # retries back off while the table stays full
    for delay in (1.1, 2.1):
        clock.advance(delay)
        ft.refresh(f2)
        eng.run_once()
        assert not f2.hw_offloaded
    assert ft.counters.hw_add_table_full == 3
    # f1 goes away; the next retry of f2 fits
    ft.teardown(f1)
    clock.advance(1)
    ft.gc()
    eng.run_once()
    clock.advance(1)
    ft.gc()
    assert ft.get(f1.id) is None and len(sw.entries) == 0
    clock.advance(5)
    ft.refresh(f2)
    eng.run_once()
    assert f2.hw_offloaded and len(sw.entries) == 2


def test_one_pending_operation_per_flow() -> None:
    clock = FakeClock()
    ft, eng, sw = make_table(clock)
    _, flow = offer(ft)
    assert flow is not None
    assert not eng.queue_add(flow) and not eng.queue_del(flow) and not eng.queue_stats(flow)
    ft.mark_closing(flow)  # FIN while the add is still queued: no delete can be queued yet
    assert eng.depths().wq_del == 0 and not flow.flags & F.HW_DYING
    eng.run_once()
    assert sw.entries == {} and [len(b) for b in sw.batches] == [], "closed before the add ran: nothing written"
    assert not flow.flags & F.HW_PENDING and flow.state == "closing"


def test_closing_after_install_removes_hw_keeps_software_until_close_timeout() -> None:
    clock = FakeClock()
    ft, eng, sw = make_table(clock)
    _, flow = offer(ft)
    assert flow is not None
    eng.run_once()
    assert flow.hw_offloaded
    ft.mark_closing(flow, close_timeout_ns=10 * NS)
    assert flow.flags & F.HW_DYING and eng.depths().wq_del == 1
    eng.run_once()
    assert sw.entries == {} and flow.flags & F.HW_DEAD and not flow.hw_offloaded
    assert ft.lookup(flow.dirs[1].tuple) is not None, "software path still has it"
    clock.advance(3)
    ft.refresh(flow)
    assert eng.depths().wq_add == 0, "a closing flow is never re-added"
    clock.advance(8)
    ft.gc()
    assert ft.get(flow.id) is None


def test_add_pending_during_teardown_waits_then_deletes() -> None:
    clock = FakeClock()
    ft, eng, sw = make_table(clock)
    _, flow = offer(ft)
    assert flow is not None
    flow.flags &= ~F.CLOSING
    # the add is queued; the flow expires before the worker runs
    clock.advance(31)
    ft.gc()
    assert ft.get(flow.id) is flow and flow.flags & F.TEARDOWN, "kept until the add is resolved"
    eng.run_once()  # closed while queued: cancelled, nothing written
    clock.advance(1)
    ft.gc()
    assert ft.get(flow.id) is None and sw.entries == {}


def test_whole_write_failure_means_unknown_outcome_and_delete_on_teardown() -> None:
    clock = FakeClock()
    ft, eng, sw = make_table(clock)
    _, flow = offer(ft)
    assert flow is not None
    sw.fail_next = ConnectionError("stream closed")
    eng.run_once()
    assert not flow.hw_offloaded and flow.hw_installed == 0b11 and ft.counters.hw_write_failures == 1
    ft.teardown(flow)
    clock.advance(1)
    ft.gc()
    eng.run_once()
    assert [u.op for u in sw.batches[-1]] == [Op.DELETE, Op.DELETE], "NOT_FOUND answers count as deleted"
    clock.advance(1)
    ft.gc()
    assert ft.get(flow.id) is None


def test_already_exists_is_answered_with_modify() -> None:
    clock = FakeClock()
    ft, eng, sw = make_table(clock)
    o, _ = nat_tuples()
    stale = FlowUpdate(Op.INSERT, "flow_v4", {"in_port": 1, "src_addr": int.from_bytes(o.src, "big"),
                                               "dst_addr": int.from_bytes(o.dst, "big"), "proto": 6,
                                               "src_port": o.sport, "dst_port": o.dport},
                       "offload", {"port": 3, "smac": 1, "dmac": 2})
    sw.write([stale])
    _, flow = offer(ft)
    assert flow is not None
    eng.run_once()
    assert flow.hw_offloaded
    assert [u.op for u in sw.batches[-1]] == [Op.MODIFY]
    assert sw.entries[stale.key()].entry.action == "offload_nat"


def _hw_flow(clock: FakeClock, tcp_timeout_s: float | None = None) -> tuple[FlowTable, OffloadEngine, FakeSwitch, Flow,
                                                                         FakeConn]:
    ft, eng, sw = make_table(clock, None if tcp_timeout_s is None else FlowtableConfig(tcp_timeout_s=tcp_timeout_s))
    conn = FakeConn()
    _, flow = offer(ft, conn=conn)
    assert flow is not None
    eng.run_once()
    assert flow.hw_offloaded
    return ft, eng, sw, flow, conn


def test_stats_read_only_below_90_percent_and_extends_on_traffic() -> None:
    clock = FakeClock()
    ft, eng, sw, flow, conn = _hw_flow(clock)
    assert isinstance(flow, Flow)
    start = clock.now
    for _ in range(3):  # t = 1, 2, 3 s: 27 s or more left of 30 -> no read
        clock.advance(1)
        ft.gc()
    assert eng.depths().wq_stats == 0
    clock.advance(1)  # t = 4 s: 26 s left < 27 s
    ft.gc()
    assert eng.depths().wq_stats == 1
    eng.run_once()
    assert len(sw.table_reads) == 1 and sw.reads == [], "one bulk read of the flow tables, no per-entry read"
    assert flow.timeout == start + 30 * NS, "no traffic: no extension"
    sw.hit(flow.dirs[1].tuple, packets=10, nbytes=1000)
    hit_at = clock.now
    clock.advance(1)
    ft.gc()
    eng.run_once()
    assert flow.timeout == hit_at + 30 * NS, "traffic seen: timeout moves to last use + 30 s"
    assert conn.acct == [(Dir.REPLY, 10, 1000)], "hardware packets reach conntrack's accounting"
    # next read not before 90 % is used up again
    clock.advance(2.5)
    ft.gc()
    assert eng.depths().wq_stats == 0
    # idle from here: read every second in the last 90 %, then expire and delete
    for _ in range(40):
        clock.advance(1)
        ft.gc()
        eng.run_once()
    assert ft.get(flow.id) is None and sw.entries == {}
    assert ft.counters.expired == 1


def _lagging_engine_life(clock: FakeClock, ft: FlowTable, eng: OffloadEngine, sw: FakeSwitch, flow: Flow, *,
                         traffic: bool, lag_s: int) -> None:
    """Run the GC every second for 60 s while the switch forwards the flow's packets every 5 s (or none);
    the offload engine answers nothing for ``lag_s`` seconds from t = 3 s (its reads far behind under load)."""
    for t in range(1, 61):
        clock.advance(1)
        if traffic and t % 5 == 0:
            sw.hit(flow.dirs[0].tuple)
        ft.gc()
        if not 3 <= t < 3 + lag_s:
            eng.run_once()
        if ft.get(flow.id) is None:
            return


def test_busy_flow_is_not_expired_on_counters_the_lagging_engine_has_not_read() -> None:
    """A 10 s flow forwarded by the switch every 5 s, while the engine reads nothing for 12 s: its timeout
    passes on old counters, but the switch has forwarded it meanwhile. It waits for the next read instead of
    expiring (counted as a wait), and that read moves the timeout on."""
    clock = FakeClock()
    ft, eng, sw, flow, _ = _hw_flow(clock, tcp_timeout_s=10)
    assert isinstance(flow, Flow)
    _lagging_engine_life(clock, ft, eng, sw, flow, traffic=True, lag_s=12)
    assert ft.get(flow.id) is flow and flow.hw_offloaded
    assert ft.counters.expired == 0 and ft.counters.hw_stats_waits >= 1


def test_idle_flow_expires_once_fresh_counters_confirm_it() -> None:
    """The same lag with no traffic: the flow expires at the first GC run after a read shows nothing new,
    not later, and its entries go."""
    clock = FakeClock()
    ft, eng, sw, flow, _ = _hw_flow(clock, tcp_timeout_s=10)
    assert isinstance(flow, Flow)
    start = clock.now
    _lagging_engine_life(clock, ft, eng, sw, flow, traffic=False, lag_s=12)
    assert ft.get(flow.id) is None and ft.counters.expired == 1 and sw.entries == {}
    assert ft.counters.hw_stats_waits >= 1
    assert flow.hw_read_at >= start + 15 * NS, "the expiry was decided on the read after the lag"


def test_expiry_waits_for_fresh_counters_one_timeout_at_most() -> None:
    """The reads never come back (the engine stuck, the switch gone): the flow expires one whole timeout
    late, not never."""
    clock = FakeClock()
    ft, _eng, _sw, flow, _ = _hw_flow(clock, tcp_timeout_s=10)
    assert isinstance(flow, Flow)
    deadline = flow.timeout
    expired_at = None
    for _ in range(40):
        clock.advance(1)
        ft.gc()  # no engine run at all
        if flow.flags & F.TEARDOWN:
            expired_at = clock.now
            break
    assert expired_at is not None and deadline + 10 * NS <= expired_at <= deadline + 11 * NS


def test_without_a_stats_reader_the_timeout_stands() -> None:
    """A switch read by nobody (idle notifications only): nothing fresher can come, so no waiting."""
    clock = FakeClock()
    ft = FlowTable(FlowtableConfig(tcp_timeout_s=10), clock=clock)
    sw = FakeSwitch(clock)
    eng = OffloadEngine(ft, sw, PipelineCaps(), None)
    _, flow = offer(ft)
    assert isinstance(flow, Flow)
    eng.run_once()
    assert flow.hw_offloaded
    deadline = flow.timeout
    while not flow.flags & F.TEARDOWN:
        clock.advance(1)
        ft.gc()
        eng.run_once()
    assert clock.now <= deadline + NS and ft.counters.hw_stats_waits == 0


class Bmv2TtlSwitch(FakeSwitch):
    """``time_since_last_hit`` as BMv2 + PI report it: PI answers idle timeout minus the remaining TTL, and
    bmv2 computes the remaining TTL as ``uint32 ms * 1000 * 1000``, i.e. modulo 2^32 ns."""

    def stats_of(self, e: _Entry) -> HwStats:
        st = super().stats_of(e)
        assert st.since_last_hit_ns is not None
        timeout_ms = e.entry.idle_timeout_ns // 1_000_000
        since_ms = st.since_last_hit_ns // 1_000_000
        remaining_ns = ((timeout_ms - since_ms) * 1000 * 1000) % 2**32 if timeout_ms > since_ms else 0
        timeout_ns = timeout_ms * 1_000_000
        return HwStats(st.packets, st.bytes, timeout_ns - remaining_ns if timeout_ns >= remaining_ns else 0)


@pytest.mark.parametrize("switch_cls", [FakeSwitch, Bmv2TtlSwitch])
def test_udp_flow_expires_its_timeout_after_the_last_packet(switch_cls: type[FakeSwitch]) -> None:
    """A UDP flow (30 s) busy on the switch for 13 s expires 30 s after its last packet, not 30 s after it
    was offloaded (~17 s after the last packet): BMv2's time_since_last_hit (~25.8 s too much for a 30 s idle
    timeout) must not make the traffic the counters just saw look old."""
    clock = FakeClock()
    ft = FlowTable(FlowtableConfig(udp_timeout_s=30), clock=clock)
    sw = switch_cls(clock)
    eng = OffloadEngine(ft, sw, PipelineCaps(), sw)
    _, flow = offer(ft, proto="udp")
    assert isinstance(flow, Flow)
    eng.run_once()
    assert flow.hw_offloaded and sw.entries
    if switch_cls is Bmv2TtlSwitch:
        sw.hit(flow.dirs[0].tuple)
        clock.advance(0.2)
        st = sw.read_stats([(e.entry.table, e.entry.match) for e in sw.entries.values()])[0]
        assert st is not None and st.since_last_hit_ns is not None
        assert 25.9 * NS < st.since_last_hit_ns < 26.0 * NS, "the switch's answer 0.2 s after a hit"
    last = 0
    for _ in range(65):  # 13 s of a datagram and its answer every 0.2 s
        sw.hit(flow.dirs[0].tuple)
        sw.hit(flow.dirs[1].tuple)
        last = clock.now
        clock.advance(0.2)
        ft.gc()
        eng.run_once()
    gone = None
    for _ in range(60 * 10):
        clock.advance(0.1)
        ft.gc()
        eng.run_once()
        if ft.get(flow.id) is None:
            gone = clock.now - last
            break
    assert gone is not None and ft.counters.expired == 1 and sw.entries == {}
    # GC runs (expire, delete, remove) add up to 2 s. With BMv2's time_since_last_hit the counters date the
    # last packet to the read that found it: up to 10 % of the timeout plus a GC run later (as on a target
    # without the field).
    slack = 2 * NS if switch_cls is FakeSwitch else 5 * NS
    assert 30 * NS <= gone <= 30 * NS + slack, f"expired {gone / NS:.1f} s after the last packet"


def test_stats_read_finding_entry_gone_clears_hw_offload_and_reinstalls() -> None:
    clock = FakeClock()
    ft, eng, sw, flow, _ = _hw_flow(clock)
    assert isinstance(flow, Flow)
    sw.entries.clear()  # switch restarted behind our back
    clock.advance(4)
    ft.gc()
    eng.run_once()  # the read finds nothing: re-add queued
    assert not flow.hw_offloaded and ft.counters.hw_entries_lost == 1
    eng.run_once()
    assert flow.hw_offloaded and len(sw.entries) == 2


def test_idle_notification_with_recent_traffic_is_not_trusted() -> None:
    clock = FakeClock()
    ft, eng, sw, flow, _ = _hw_flow(clock)
    assert isinstance(flow, Flow)
    clock.advance(20)
    ft.refresh(flow)  # e.g. the reply direction kept the flow alive
    clock.advance(15)  # past the original deadline, not past the refreshed one
    assert ft.idle_notification(flow.dirs[0].tuple) is IdleVerdict.IGNORED
    assert ft.get(flow.id) is flow and flow.hw_offloaded
    assert eng.depths().wq_stats == 1, "verifies with a stats read instead"
    eng.run_once()
    clock.advance(20)
    assert ft.idle_notification(flow.dirs[0].tuple) is IdleVerdict.EXPIRED
    assert flow.flags & F.TEARDOWN and flow.flags & F.HW_DYING
    eng.run_once()
    clock.advance(1)
    ft.gc()
    assert ft.get(flow.id) is None and sw.entries == {}
    o, _ = nat_tuples(sport=1)
    assert ft.idle_notification(o) is IdleVerdict.UNKNOWN_ENTRY


def test_unsupported_actions_stay_software() -> None:
    clock = FakeClock()
    ft, eng, sw = make_table(clock)
    from ftutil import directions

    from runtime.flowtable.model import FlowTuple
    o = FlowTuple.make(1, "2001:db8::1", "2001:db8:1::1", "tcp", 40000, 80)
    r = FlowTuple.make(4, "2001:db8:1::1", "2001:db8::99", "tcp", 80, 40000)  # IPv6 NAT: no offload_nat in flow_v6
    od, rd = directions(o, r)
    _, flow = ft.offer(FakeConn(), od, rd, seen_reply=True, tcp_established=True)
    assert flow is not None
    eng.run_once()
    assert sw.batches == [] and flow.flags & F.HW_UNSUPPORTED and ft.counters.hw_unsupported == 1
    clock.advance(5)
    ft.refresh(flow)
    assert eng.depths().wq_add == 0, "never retried"


def test_counters_cost_one_bulk_read_per_period_whatever_the_number_of_flows() -> None:
    """300 flows in the last 90 % of their timeout: every GC run asks about all of them, the switch is read
    once per period (one whole-table pass), and each flow's counters still reach the flow and conntrack."""
    clock = FakeClock()
    ft, eng, sw = make_table(clock)
    conns = [FakeConn() for _ in range(300)]
    flows = [offer(ft, sport=2000 + i, conn=c)[1] for i, c in enumerate(conns)]
    while eng.run_once():
        pass
    assert all(isinstance(f, Flow) and f.hw_offloaded for f in flows)
    busy = flows[7]
    assert isinstance(busy, Flow)
    for period in range(3):
        clock.advance(4 if period == 0 else 1)  # into the last 90 %, then one GC period after another
        if period == 1:
            sw.hit(busy.dirs[0].tuple, packets=5, nbytes=500)
            hit_at = clock.now
        ft.gc()
        # the 90 % rule keeps its meaning: once traffic moved the busy flow's timeout it is not read for a while
        assert eng.depths().wq_stats == (299 if period == 2 else 300)
        while eng.run_once():
            pass
        assert len(sw.table_reads) == period + 1, "one bulk read per period"
    assert sw.reads == [], "no per-entry reads for the periodic stats"
    assert ft.counters.hw_stats_passes == 3 and ft.counters.hw_stats_reads == 3 * 300 - 1
    assert conns[7].acct == [(Dir.ORIGINAL, 5, 500)]
    assert busy.timeout == hit_at + 30 * NS, "traffic moves the timeout as a per-flow read did"
    # the last counters of deleted entries are read per entry, for those entries only
    sw.hit(busy.dirs[1].tuple, packets=2, nbytes=200)
    ft.mark_closing(busy)
    eng.run_once()
    assert sw.reads == [2] and conns[7].acct[-1] == (Dir.REPLY, 2, 200)


def test_an_entry_installed_after_the_bulk_read_is_not_taken_for_lost() -> None:
    clock = FakeClock()
    ft, eng, sw, _, _ = _hw_flow(clock)
    clock.advance(4)
    ft.gc()
    eng.run_once()  # the period's bulk read
    assert len(sw.table_reads) == 1
    _, second = offer(ft, sport=41000)
    assert isinstance(second, Flow)
    eng.run_once()  # installed after the read
    assert second.hw_offloaded
    assert eng.queue_stats(second)  # asked about in the same period: the read does not know its entries yet
    eng.run_once()
    assert second.hw_offloaded and ft.counters.hw_entries_lost == 0 and len(sw.table_reads) == 1
    clock.advance(1)
    sw.hit(second.dirs[0].tuple, packets=3, nbytes=300)
    assert eng.queue_stats(second)
    eng.run_once()  # next period: a new read that has it
    assert len(sw.table_reads) == 2 and second.hw_packets[0] == 3 and second.hw_offloaded


def test_a_failed_bulk_read_changes_nothing_and_is_tried_again() -> None:
    clock = FakeClock()
    ft, eng, sw, flow, _ = _hw_flow(clock)

    def broken(tables: Sequence[str]) -> dict[Any, HwStats]:
        raise ConnectionError("switch gone")

    sw.read_tables = broken  # type: ignore[method-assign]
    clock.advance(4)
    ft.gc()
    eng.run_once()
    assert flow.hw_offloaded and not flow.flags & F.HW_PENDING and ft.counters.hw_stats_passes == 0
    del sw.read_tables  # the switch answers again
    clock.advance(1)
    ft.gc()
    eng.run_once()
    assert ft.counters.hw_stats_passes == 1 and ft.counters.hw_stats_reads == 1


def test_a_slow_bulk_read_is_not_repeated_before_as_long_again_has_passed() -> None:
    """A switch that needs 3 s to read the table is not read on every GC run: after a read the worker
    waits as long as the read took, answering from the last read meanwhile, so adds and deletes go on."""
    clock = FakeClock()
    ft, eng, sw, flow, _ = _hw_flow(clock)
    read_tables = sw.read_tables

    def slow(tables: Sequence[str]) -> dict[Any, HwStats]:
        clock.advance(3)
        return read_tables(tables)

    sw.read_tables = slow  # type: ignore[method-assign]
    clock.advance(4)
    passes = []
    for _ in range(8):
        ft.gc()
        eng.run_once()
        passes.append(ft.counters.hw_stats_passes)
        clock.advance(1)
    assert passes == [1, 1, 1, 2, 2, 2, 3, 3], "a read at most every 3 s after the last ended"
    assert flow.hw_offloaded and ft.counters.hw_entries_lost == 0


def test_a_period_of_stats_for_thousands_of_flows_takes_one_read() -> None:
    """Every flow the GC asks about in a period is answered from one whole-table read, however many there
    are (here 20x the engine's batch), with the counters each flow had; none of them looks idle. Drained a
    batch at a time, a GC run in between made each batch read the tables again and the queue fell behind."""
    clock = FakeClock()
    ft, eng, sw = make_table(clock)
    flows = []
    for i in range(eng.batch_size * 20):
        _, flow = offer(ft, sport=20000 + i)
        assert isinstance(flow, Flow)
        flows.append(flow)
    while eng.run_once():
        pass
    assert all(f.hw_offloaded for f in flows)
    before = [f.timeout for f in flows]
    clock.advance(4)  # every flow is now in the last 90 % of its timeout: the GC asks for all of them
    for f in flows:
        sw.hit(f.dirs[0].tuple, packets=2, nbytes=200)
    ft.gc()
    assert eng.depths().wq_stats == len(flows)
    reads = len(sw.table_reads)
    eng.run_once()
    assert len(sw.table_reads) == reads + 1 and eng.depths().wq_stats == 0
    assert all(f.hw_packets[0] == 2 and not f.flags & F.HW_PENDING for f in flows)
    assert all(f.timeout > deadline for f, deadline in zip(flows, before, strict=True))  # traffic moved them on


def _deleted_hw_flow(clock: FakeClock) -> tuple[FlowTable, OffloadEngine, FakeSwitch, Flow]:
    """A [HW_OFFLOAD] flow closed by a FIN, its entries deleted by the engine."""
    ft, eng, sw, flow, _ = _hw_flow(clock)
    assert isinstance(flow, Flow)
    ft.mark_closing(flow)
    eng.run_once()
    assert sw.entries == {}
    return ft, eng, sw, flow


def test_an_idle_notice_older_than_our_delete_queues_no_second_delete() -> None:
    """The switch sent the notice before our delete reached it (a stream backed up behind a storm of
    closes): the entry is gone, so nothing is queued and the notice is counted as late. Once the key is
    installed again (a reused 5-tuple) a notice for it is news again."""
    clock = FakeClock()
    ft, eng, sw, flow = _deleted_hw_flow(clock)
    t = flow.dirs[0].tuple
    clock.advance(11)
    ft.gc()
    assert ft.get(flow.id) is None and ft.idle_notification(t) is IdleVerdict.UNKNOWN_ENTRY
    batches = len(sw.batches)
    assert not eng.queue_delete(delete_for(t, eng.caps)) and ft.counters.idle_after_delete == 1
    eng.run_once()
    assert len(sw.batches) == batches, "no delete that the switch would answer NOT_FOUND"

    _, again = offer(ft, conn=FakeConn())  # the same 5-tuple, installed again
    assert again is not None and again.dirs[0].tuple == t
    eng.run_once()
    assert again.hw_offloaded and len(sw.entries) == 2
    assert eng.queue_delete(delete_for(t, eng.caps)), "a live key again: not taken for a late notice"


def test_deleted_entries_are_remembered_for_a_while_only() -> None:
    clock = FakeClock()
    ft, eng, _sw, flow = _deleted_hw_flow(clock)
    clock.advance(eng.DELETED_MEMORY_NS / NS)
    assert eng.queue_delete(delete_for(flow.dirs[0].tuple, eng.caps))
    assert ft.counters.idle_after_delete == 0


def test_a_repeated_idle_notice_for_a_deleted_orphan_deletes_nothing_again() -> None:
    """BMv2 repeats an idle entry's notice every ~2 s until the entry is gone: after the orphan's delete the
    repeats are late notices, not new orphans."""
    clock = FakeClock()
    ft, eng, sw = make_table(clock)
    (od, _rd) = directions(*nat_tuples(sport=41000))
    sw.write([entry_for(od.tuple, od.rewrite, eng.caps)])  # on the switch, owned by no flow
    assert len(sw.entries) == 1 and ft.idle_notification(od.tuple) is IdleVerdict.UNKNOWN_ENTRY
    assert eng.queue_delete(delete_for(od.tuple, eng.caps))
    eng.run_once()
    assert sw.entries == {}
    assert not eng.queue_delete(delete_for(od.tuple, eng.caps)) and ft.counters.idle_after_delete == 1
