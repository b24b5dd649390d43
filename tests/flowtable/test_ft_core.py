"""The flowtable core: creation rules, lookups, timeouts, the O(expired) GC, closing and teardown."""

from __future__ import annotations

from ftutil import FakeClock, FakeConn, directions, make_table, nat_tuples, offer

from runtime.actions import route_actions
from runtime.flowtable.core import FlowTable, OfferResult
from runtime.flowtable.model import Dir, FlowFlag, FlowTuple
from runtime.flowtable.policy import FlowtableConfig, PolicyRule

F = FlowFlag


def sw_table(clock: FakeClock, **cfg: object) -> FlowTable:
    return FlowTable(FlowtableConfig(**cfg), clock=clock)  # type: ignore[arg-type]


def test_created_only_with_both_directions_established_and_policy() -> None:
    clock = FakeClock()
    ft = sw_table(clock, rules=(PolicyRule(offload=False, dport=None, protos=frozenset({17})),))
    o, r = directions(*nat_tuples())
    conn = FakeConn()
    assert ft.offer(conn, o, r, seen_reply=False, tcp_established=True)[0] is OfferResult.NO_REPLY
    assert ft.offer(conn, o, r, seen_reply=True, tcp_established=False)[0] is OfferResult.NOT_ESTABLISHED
    assert ft.offer(conn, o, r, seen_reply=True, tcp_established=True, fin_rst_seen=True)[0] is OfferResult.CLOSING
    assert ft.offer(FakeConn(dying=True), o, r, seen_reply=True, tcp_established=True)[0] is OfferResult.DYING
    uo, ur = directions(*nat_tuples(proto="udp"))
    assert ft.offer(conn, uo, ur, seen_reply=True)[0] is OfferResult.POLICY, "the rule skips UDP"
    assert len(ft) == 0
    result, flow = ft.offer(conn, o, r, seen_reply=True, tcp_established=True)
    assert result is OfferResult.OFFLOADED and flow is not None
    assert ft.offer(conn, o, r, seen_reply=True, tcp_established=True)[0] is OfferResult.EXISTS
    assert ft.counters.offer_skipped == {"no_reply": 1, "not_established": 1, "closing": 1, "dying": 1, "policy": 1}
    # both tuples are in, NAT flags from the tuples, software only (no engine attached)
    assert ft.lookup(o.tuple) == (flow, Dir.ORIGINAL) and ft.lookup(r.tuple) == (flow, Dir.REPLY)
    assert flow.flags == F.SNAT and flow.state == "offloaded"
    assert flow.timeout == clock.now + 30_000_000_000


def test_udp_needs_no_tcp_state_and_ports_must_be_covered() -> None:
    clock = FakeClock()
    ft = sw_table(clock, ports=frozenset({1, 2}), udp_timeout_s=10.0)
    o, r = directions(*nat_tuples(proto="udp"))
    assert ft.offer(FakeConn(), o, r, seen_reply=True)[0] is OfferResult.POLICY, "port 4 is not in the flowtable"
    ft2 = sw_table(clock, udp_timeout_s=10.0)
    res, flow = ft2.offer(FakeConn(), o, r, seen_reply=True)
    assert res is OfferResult.OFFLOADED and flow is not None and flow.timeout_ns == 10_000_000_000


def test_inconsistent_nat_is_refused() -> None:
    clock = FakeClock()
    ft = sw_table(clock)
    o, r = nat_tuples()
    bad = FlowTuple.make(4, "8.8.8.8", "192.0.2.99", "tcp", 80, 60000)  # not what orig's SNAT produces
    od, _ = directions(o, r)
    from runtime.flowtable.core import FlowDirection
    rd2 = FlowDirection(bad, route_actions(bad, o, out_port=1, smac=b"\x02" * 6, dmac=b"\x04" * 6))
    assert ft.offer(FakeConn(), od, rd2, seen_reply=True, tcp_established=True)[0] is OfferResult.INCONSISTENT


def test_expiry_refresh_and_removal() -> None:
    clock = FakeClock()
    ft = sw_table(clock)
    conn = FakeConn()
    _, flow = offer(ft, conn=conn)
    assert flow is not None
    clock.advance(20)
    ft.refresh(flow)  # software traffic
    assert flow.timeout == clock.now + 30_000_000_000
    clock.advance(0.5)
    old = flow.timeout
    ft.refresh(flow)
    assert flow.timeout == old, "moves under a second are not written (flow_offload_refresh)"
    clock.advance(29)
    ft.gc()
    assert len(ft) == 1
    clock.advance(2)
    ft.gc()
    assert len(ft) == 0 and ft.counters.expired == 1 and conn.torn_down == 1
    assert ft.lookup(flow.dirs[0].tuple) is None


def test_dying_conntrack_entry_is_not_found_and_collected() -> None:
    clock = FakeClock()
    ft = sw_table(clock)
    conn = FakeConn()
    _, flow = offer(ft, conn=conn)
    assert flow is not None
    conn.dying = True
    assert ft.lookup(flow.dirs[0].tuple) is None
    ft.teardown(flow)
    clock.advance(1)
    ft.gc()
    assert len(ft) == 0


def test_gc_is_o_expired() -> None:
    """100k live flows and one expiring: the GC runs visit about one flow, not 100k per run."""
    clock = FakeClock()
    ft = sw_table(clock)
    _, lone = offer(ft, sport=1)
    clock.advance(10)
    conn = FakeConn()
    o0, r0 = directions(*nat_tuples(sport=2))
    from runtime.flowtable.core import FlowDirection
    for i in range(100_000):
        o = FlowTuple(1, o0.tuple.src, o0.tuple.dst, 17, 1000 + (i % 60000), 53 + i // 60000)
        r = FlowTuple(4, r0.tuple.src, r0.tuple.dst, 17, 53 + i // 60000, 1000 + (i % 60000))
        ft.offer(conn, FlowDirection(o, route_actions(o, r, out_port=4, smac=b"\x02" * 6, dmac=b"\x04" * 6)),
                 FlowDirection(r, route_actions(r, o, out_port=1, smac=b"\x02" * 6, dmac=b"\x04" * 6)),
                 seen_reply=True)
    assert len(ft) == 100_001
    visits = ft.counters.gc_visits
    for _ in range(21):  # every second from t=10 to t=31
        clock.advance(1)
        ft.gc()
    assert lone is not None and ft.get(lone.id) is None, "the lone flow expired"
    assert len(ft) == 100_000
    assert ft.counters.gc_visits - visits == 1, "21 runs visited the one expiring flow and no other"
    assert ft.scheduled() == 100_000, "every live flow sits in exactly one wheel slot"


def test_closing_software_only_keeps_forwarding_until_close_timeout() -> None:
    clock = FakeClock()
    ft = sw_table(clock, close_timeout_s=10.0)
    _, flow = offer(ft)
    assert flow is not None
    ft.mark_closing(flow)
    assert flow.state == "closing" and ft.lookup(flow.dirs[0].tuple) is not None
    clock.advance(5)
    ft.refresh(flow)  # does not extend a closing flow
    clock.advance(5.5)
    ft.gc()
    assert len(ft) == 0 and ft.counters.closed == 1


def test_engine_attached_but_hw_off_is_software_only() -> None:
    clock = FakeClock()
    ft, eng, sw = make_table(clock, FlowtableConfig(hw_offload=False))
    _, flow = offer(ft)
    assert flow is not None and not flow.flags & F.HW
    assert eng.run_once() == 0 and sw.batches == []
