"""conntrack against Linux's nf_conntrack_proto_tcp.c state table, timeouts and loose pick-up; UDP, ICMP."""

from __future__ import annotations

import pytest

from runtime.actions import DecTtl, Output, SetEthDst, SetEthSrc
from runtime.conntrack import (
    ACK,
    FIN,
    IGNORE,
    INVALID,
    NS,
    RST,
    SYN,
    Conn,
    Conntrack,
    CtEvent,
    CtTuple,
    Dir,
    Status,
    TcpState,
    Verdict,
    format_conntrack,
    tcp_next,
)

O, R = Dir.ORIGINAL, Dir.REPLY  # noqa: E741
S = TcpState
T = CtTuple.make("10.0.1.10", "192.0.2.20", "tcp", 40000, 80)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000 * NS

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * NS)


@pytest.mark.parametrize(("state", "direction", "flags", "expected"), [
    # ORIGINAL
    (S.NONE, O, SYN, S.SYN_SENT), (S.SYN_SENT, O, SYN, S.SYN_SENT), (S.ESTABLISHED, O, SYN, IGNORE),
    (S.TIME_WAIT, O, SYN, S.SYN_SENT), (S.CLOSE, O, SYN, S.SYN_SENT), (S.SYN_SENT2, O, SYN, S.SYN_SENT2),
    (S.NONE, O, SYN | ACK, INVALID), (S.SYN_SENT2, O, SYN | ACK, S.SYN_RECV), (S.SYN_RECV, O, SYN | ACK, S.SYN_RECV),
    (S.SYN_SENT, O, FIN | ACK, INVALID), (S.ESTABLISHED, O, FIN | ACK, S.FIN_WAIT), (S.CLOSE_WAIT, O, FIN, S.LAST_ACK),
    (S.NONE, O, ACK, S.ESTABLISHED), (S.SYN_SENT, O, ACK, INVALID), (S.SYN_RECV, O, ACK, S.ESTABLISHED),
    (S.FIN_WAIT, O, ACK, S.CLOSE_WAIT), (S.LAST_ACK, O, ACK, S.TIME_WAIT),
    (S.NONE, O, RST, INVALID), (S.ESTABLISHED, O, RST | ACK, S.CLOSE), (S.NONE, O, 0, INVALID),
    # REPLY
    (S.SYN_SENT, R, SYN, S.SYN_SENT2), (S.ESTABLISHED, R, SYN, INVALID), (S.TIME_WAIT, R, SYN, S.SYN_SENT),
    (S.SYN_SENT, R, SYN | ACK, S.SYN_RECV), (S.SYN_RECV, R, SYN | ACK, IGNORE), (S.ESTABLISHED, R, SYN | ACK, IGNORE),
    (S.ESTABLISHED, R, FIN | ACK, S.FIN_WAIT), (S.FIN_WAIT, R, FIN | ACK, S.LAST_ACK),
    (S.SYN_SENT, R, ACK, IGNORE), (S.SYN_RECV, R, ACK, S.SYN_RECV), (S.FIN_WAIT, R, ACK, S.CLOSE_WAIT),
    (S.SYN_SENT2, R, ACK, IGNORE), (S.SYN_SENT, R, RST, S.CLOSE),
])
def test_tcp_table_matches_linux(state: TcpState, direction: Dir, flags: int, expected: int) -> None:
    assert tcp_next(state, direction, flags) == expected


def test_tcp_handshake_data_close_with_timeouts() -> None:
    clock = Clock()
    ct = Conntrack(clock)
    events: list[tuple[str, str]] = []
    ct.subscribe(lambda ev, c: events.append((ev.value, c.state_name())))
    c = ct.new(T, iif=1)
    assert ct.packet(c, O, length=60, tcp_flags=SYN, in_port=1) is Verdict.ACCEPT
    assert ct.confirm(c)
    assert ct.lookup(T) == (c, O) and ct.lookup(T.invert()) == (c, R)
    assert c.tcp_state == S.SYN_SENT and c.timeout_ns - clock.now == 120 * NS
    ct.packet(c, R, length=60, tcp_flags=SYN | ACK, in_port=4)
    assert c.tcp_state == S.SYN_RECV and c.timeout_ns - clock.now == 60 * NS
    assert not c.status & Status.ASSURED
    ct.packet(c, O, length=52, tcp_flags=ACK)
    assert c.tcp_state == S.ESTABLISHED and c.status & Status.ASSURED
    assert c.timeout_ns - clock.now == 5 * 86400 * NS
    ct.packet(c, O, length=52, tcp_flags=FIN | ACK)
    assert c.tcp_state == S.FIN_WAIT and c.timeout_ns - clock.now == 120 * NS
    ct.packet(c, R, length=52, tcp_flags=ACK)
    assert c.tcp_state == S.CLOSE_WAIT and c.timeout_ns - clock.now == 60 * NS
    ct.packet(c, R, length=52, tcp_flags=FIN | ACK)
    assert c.tcp_state == S.LAST_ACK and c.timeout_ns - clock.now == 30 * NS
    ct.packet(c, O, length=52, tcp_flags=ACK)
    assert c.tcp_state == S.TIME_WAIT and c.timeout_ns - clock.now == 120 * NS
    assert [e for e in events if e[0] in ("NEW", "STATE", "ASSURED")] == [
        ("NEW", "SYN_SENT"), ("STATE", "SYN_RECV"), ("ASSURED", "ESTABLISHED"), ("STATE", "ESTABLISHED"),
        ("STATE", "FIN_WAIT"), ("STATE", "CLOSE_WAIT"), ("STATE", "LAST_ACK"), ("STATE", "TIME_WAIT")]
    assert c.packets == [4, 3] and c.iif == [1, 4]
    clock.advance(121)
    assert ct.gc() == [c] and len(ct) == 0 and ct.lookup(T) is None
    assert events[-1] == ("DESTROY", "TIME_WAIT")


def test_invalid_and_ignored_packets() -> None:
    clock = Clock()
    ct = Conntrack(clock)
    assert not ct.can_create(6, SYN | ACK) and not ct.can_create(6, FIN) and ct.can_create(6, SYN)
    c = ct.new(T)
    ct.packet(c, O, length=60, tcp_flags=SYN)
    ct.confirm(c)
    before = c.timeout_ns
    clock.advance(1)
    assert ct.packet(c, O, length=52, tcp_flags=ACK) is Verdict.INVALID  # ACK before SYN/ACK
    assert ct.packet(c, R, length=52, tcp_flags=ACK) is Verdict.ACCEPT  # sIG: accepted, no refresh
    assert c.tcp_state == S.SYN_SENT and c.timeout_ns == before
    assert ct.stats["invalid"] == 1


def test_loose_pickup_of_established_connection() -> None:
    """A restarted controller sees mid-stream packets: nf_conntrack_tcp_loose picks them up as ESTABLISHED."""
    clock = Clock()
    ct = Conntrack(clock)
    assert ct.can_create(6, ACK)
    c = ct.new(T)
    assert ct.packet(c, O, length=1500, tcp_flags=ACK) is Verdict.ACCEPT
    ct.confirm(c)
    assert c.tcp_state == S.ESTABLISHED and c.picked_up
    assert c.timeout_ns - clock.now == 300 * NS  # no reply yet: the UNACK timeout, not 5 days
    ct.packet(c, R, length=52, tcp_flags=ACK)  # first reply sets SEEN_REPLY
    assert not c.status & Status.ASSURED
    ct.packet(c, O, length=1500, tcp_flags=ACK)
    assert c.status & Status.ASSURED and c.timeout_ns - clock.now == 5 * 86400 * NS
    strict = Conntrack(clock, tcp_loose=False)
    assert not strict.can_create(6, ACK)
    assert strict.packet(strict.new(T), O, length=52, tcp_flags=ACK) is Verdict.INVALID


def test_rst_without_reply_kills_and_reopen_from_time_wait() -> None:
    clock = Clock()
    ct = Conntrack(clock)
    c = ct.new(T)
    ct.packet(c, O, length=60, tcp_flags=SYN)
    ct.confirm(c)
    ct.packet(c, R, length=40, tcp_flags=RST | ACK)
    assert len(ct) == 0  # "only reply is a RST": deleted at once
    c2 = ct.new(T)
    for d, f in ((O, SYN), (R, SYN | ACK), (O, ACK), (O, FIN | ACK), (R, FIN | ACK), (O, ACK)):
        ct.packet(c2, d, length=52, tcp_flags=f)
        ct.confirm(c2)
    assert c2.tcp_state == S.TIME_WAIT
    assert ct.packet(c2, O, length=60, tcp_flags=SYN) is Verdict.REOPEN
    assert ct.lookup(T) is None  # the old one is gone; the slow path tracks the SYN as new


def test_rst_closes_with_close_timeout() -> None:
    clock = Clock()
    ct = Conntrack(clock)
    c = ct.new(T)
    for d, f in ((O, SYN), (R, SYN | ACK), (O, ACK), (R, RST)):
        ct.packet(c, d, length=52, tcp_flags=f)
        ct.confirm(c)
    assert c.tcp_state == S.CLOSE and c.timeout_ns - clock.now == 10 * NS and c.closing


def test_udp_unreplied_replied_assured() -> None:
    clock = Clock()
    ct = Conntrack(clock)
    u = CtTuple.make("10.0.1.10", "192.0.2.20", "udp", 40000, 53)
    c = ct.new(u)
    ct.packet(c, O, length=40)
    ct.confirm(c)
    assert c.state_name() == "UNREPLIED" and c.timeout_ns - clock.now == 30 * NS
    ct.packet(c, R, length=40)
    assert c.state_name() == "REPLIED" and c.timeout_ns - clock.now == 30 * NS
    ct.packet(c, O, length=40)  # within 2 s of creation: still not a stream
    assert c.state_name() == "REPLIED"
    clock.advance(2.5)
    ct.packet(c, R, length=40)
    assert c.state_name() == "ASSURED" and c.timeout_ns - clock.now == 120 * NS


def test_icmp_echo_and_offloadable_hook() -> None:
    clock = Clock()
    ct = Conntrack(clock)
    i = CtTuple.make("10.0.1.10", "192.0.2.20", "icmp", 7, 7)
    assert i.invert() == CtTuple.make("192.0.2.20", "10.0.1.10", "icmp", 7, 7)
    c = ct.new(i)
    ct.packet(c, O, length=84)
    ct.confirm(c)
    ct.packet(c, R, length=84)
    assert c.state_name() == "REPLIED" and c.timeout_ns - clock.now == 30 * NS
    assert not c.offloadable()  # ICMP never goes to the flowtable

    fired: list[int] = []
    ct.subscribe(lambda ev, conn: fired.append(conn.id) if ev is CtEvent.OFFLOADABLE else None)
    u = ct.new(CtTuple.make("10.0.1.10", "192.0.2.20", "udp", 1, 2))
    ct.packet(u, O, length=40)
    ct.confirm(u)
    acts = (SetEthSrc(b"\2" * 6), SetEthDst(b"\4" * 6), DecTtl(), Output(4))
    ct.set_actions(u, O, acts)
    ct.packet(u, R, length=40)
    assert fired == []  # reply seen but the reply direction's actions are not known yet
    ct.set_actions(u, R, acts)
    assert fired == [u.id]
    ct.set_actions(u, R, acts)
    assert fired == [u.id]  # once


def test_snapshot_and_format() -> None:
    clock = Clock()
    ct = Conntrack(clock)
    c = ct.new(T, CtTuple.make("192.0.2.20", "192.0.2.1", "tcp", 80, 40000))
    ct.set_reply(c, c.tuples[1])
    ct.packet(c, O, length=60, tcp_flags=SYN)
    ct.confirm(c)
    [r] = ct.snapshot()
    assert r.state == "SYN_SENT" and "UNREPLIED" in r.status and "SRC_NAT" in r.status
    assert r.to_dict()["reply"] == {"src": "192.0.2.20", "dst": "192.0.2.1", "sport": 80, "dport": 40000}
    line = format_conntrack([r])
    assert line.startswith("ipv4  tcp    6 120 SYN_SENT src=10.0.1.10 dst=192.0.2.20 sport=40000 dport=80")
    assert "[UNREPLIED] src=192.0.2.20 dst=192.0.2.1 sport=80 dport=40000" in line


# ------------------------------------------------------------------------ the end of a connection's life

def _established(ct: Conntrack, t: CtTuple = T) -> tuple[Conn, list[tuple[str, int, str]]]:
    """A connection through SYN, SYN/ACK, ACK (client ISN 1000, server ISN 5000), and its event log."""
    events: list[tuple[str, int, str]] = []
    ct.subscribe(lambda ev, c: events.append((ev.value, c.id, c.state_name())))
    c = ct.new(t)
    ct.packet(c, O, length=60, tcp_flags=SYN, seq=1000)
    ct.confirm(c)
    ct.packet(c, R, length=60, tcp_flags=SYN | ACK, seq=5000, ack_seq=1001)
    ct.packet(c, O, length=52, tcp_flags=ACK, seq=1001, ack_seq=5001)
    assert c.tcp_state == S.ESTABLISHED
    return c, events


def _walk(ct: Conntrack, clock: Clock, c: Conn, steps: list[tuple[Dir, int, TcpState, int]]) -> None:
    for d, flags, state, timeout in steps:
        assert ct.packet(c, d, length=52, tcp_flags=flags) is Verdict.ACCEPT
        assert (c.tcp_state, (c.timeout_ns - clock.now) // NS) == (state, timeout), (d, flags)


@pytest.mark.parametrize("closer", [O, R])
def test_close_started_from_either_side_reaches_time_wait_for_120_s(closer: Dir) -> None:
    clock = Clock()
    ct = Conntrack(clock)
    c, events = _established(ct)
    other = closer.other
    _walk(ct, clock, c, [(closer, FIN | ACK, S.FIN_WAIT, 120), (other, ACK, S.CLOSE_WAIT, 60),
                         (other, FIN | ACK, S.LAST_ACK, 30), (closer, ACK, S.TIME_WAIT, 120),
                         (closer, ACK, S.TIME_WAIT, 120)])  # a retransmitted last ACK
    assert [e[2] for e in events if e[0] == "STATE"][-4:] == ["FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT"]
    clock.advance(119)
    assert ct.gc() == [] and ct.lookup(T) is not None
    clock.advance(2)
    assert ct.gc() and ct.lookup(T) is None and events[-1][0] == "DESTROY"


def test_simultaneous_close() -> None:
    clock = Clock()
    ct = Conntrack(clock)
    c, _ = _established(ct)
    _walk(ct, clock, c, [(O, FIN | ACK, S.FIN_WAIT, 120), (R, FIN | ACK, S.LAST_ACK, 30),
                         (O, ACK, S.TIME_WAIT, 120), (R, ACK, S.TIME_WAIT, 120)])


def test_rst_closes_and_a_syn_after_it_reopens_only_from_the_rst_side() -> None:
    """Without a FIN, a SYN in CLOSE reopens only when the last packet that way was the RST (the client
    aborted and starts again); after the server's RST the client's SYN is merely ignored."""
    clock = Clock()
    ct = Conntrack(clock)
    c, _ = _established(ct)
    _walk(ct, clock, c, [(O, RST, S.CLOSE, 10)])
    assert ct.packet(c, O, length=60, tcp_flags=SYN, seq=9000) is Verdict.REOPEN
    assert ct.lookup(T) is None
    c2, _ = _established(ct)
    _walk(ct, clock, c2, [(R, RST | ACK, S.CLOSE, 10)])
    clock.advance(3)
    assert ct.packet(c2, O, length=60, tcp_flags=SYN, seq=9000) is Verdict.ACCEPT
    assert ct.lookup(T) == (c2, O) and c2.tcp_state == S.CLOSE
    assert c2.timeout_ns - clock.now == 7 * NS  # ignored: no refresh


def test_syn_reusing_the_tuple_in_time_wait_destroys_and_starts_a_new_connection() -> None:
    clock = Clock()
    ct = Conntrack(clock)
    c, events = _established(ct)
    _walk(ct, clock, c, [(O, FIN | ACK, S.FIN_WAIT, 120), (R, FIN | ACK, S.LAST_ACK, 30), (O, ACK, S.TIME_WAIT, 120)])
    clock.advance(5)
    assert ct.packet(c, O, length=60, tcp_flags=SYN, seq=77000) is Verdict.REOPEN
    assert ct.lookup(T) is None and ct.lookup(T.invert()) is None
    assert events[-1] == ("DESTROY", c.id, "TIME_WAIT")
    # the slow path then tracks the same SYN as new (-NF_REPEAT)
    assert ct.can_create(6, SYN)
    n = ct.new(T)
    assert ct.packet(n, O, length=60, tcp_flags=SYN, seq=77000) is Verdict.ACCEPT and ct.confirm(n)
    ct.packet(n, R, length=60, tcp_flags=SYN | ACK, seq=88000, ack_seq=77001)
    ct.packet(n, O, length=52, tcp_flags=ACK, seq=77001, ack_seq=88001)
    assert n.id != c.id and n.tcp_state == S.ESTABLISHED and n.status & Status.ASSURED
    assert [e for e in events if e[1] == n.id and e[0] in ("NEW", "STATE")] == [
        ("NEW", n.id, "SYN_SENT"), ("STATE", n.id, "SYN_RECV"), ("STATE", n.id, "ESTABLISHED")]


def test_ignored_syn_then_its_syn_ack_resyncs_the_connection() -> None:
    """A SYN in LAST_ACK is ignored (sIG) but remembered; the server's SYN/ACK acknowledging exactly that SYN
    shows both ends are in sync and conntrack is not: it resyncs to SYN_RECV, then ESTABLISHED."""
    clock = Clock()
    ct = Conntrack(clock)
    c, events = _established(ct)
    _walk(ct, clock, c, [(O, FIN | ACK, S.FIN_WAIT, 120), (R, FIN | ACK, S.LAST_ACK, 30)])
    clock.advance(2)
    assert ct.packet(c, O, length=60, tcp_flags=SYN, seq=40000) is Verdict.ACCEPT
    assert c.tcp_state == S.LAST_ACK and c.timeout_ns - clock.now == 28 * NS
    # a SYN/ACK that does not acknowledge the ignored SYN changes nothing
    assert ct.packet(c, R, length=60, tcp_flags=SYN | ACK, seq=70000, ack_seq=12345) is Verdict.ACCEPT
    assert c.tcp_state == S.LAST_ACK
    # the server answers the client's SYN again; now it does: resync
    assert ct.packet(c, O, length=60, tcp_flags=SYN, seq=40000) is Verdict.ACCEPT
    assert ct.packet(c, R, length=60, tcp_flags=SYN | ACK, seq=70000, ack_seq=40001) is Verdict.ACCEPT
    assert c.tcp_state == S.SYN_RECV and c.timeout_ns - clock.now == 60 * NS
    ct.packet(c, O, length=52, tcp_flags=ACK, seq=40001, ack_seq=70001)
    assert c.tcp_state == S.ESTABLISHED and c.timeout_ns - clock.now == 5 * 86400 * NS
    assert [e[2] for e in events if e[0] == "STATE"][-2:] == ["SYN_RECV", "ESTABLISHED"]
    # the new session closes like any other: its close is not confused with the old one's
    _walk(ct, clock, c, [(O, FIN | ACK, S.FIN_WAIT, 120), (R, ACK, S.CLOSE_WAIT, 60)])


def test_challenge_ack_to_an_ignored_syn_is_not_the_last_ack() -> None:
    """RFC 5961: a server in LAST_ACK answers a new SYN with a challenge ACK, which must not move the
    connection to TIME_WAIT as if it acknowledged the last FIN."""
    clock = Clock()
    ct = Conntrack(clock)
    c, _ = _established(ct)
    _walk(ct, clock, c, [(R, FIN | ACK, S.FIN_WAIT, 120), (O, FIN | ACK, S.LAST_ACK, 30)])
    assert ct.packet(c, O, length=60, tcp_flags=SYN, seq=40000) is Verdict.ACCEPT
    assert ct.packet(c, R, length=52, tcp_flags=ACK, seq=5002, ack_seq=1002) is Verdict.ACCEPT
    assert c.tcp_state == S.LAST_ACK
    ct.packet(c, R, length=52, tcp_flags=ACK, seq=5002, ack_seq=1002)
    assert c.tcp_state == S.TIME_WAIT


def test_offloaded_connection_timeout_is_a_day_then_its_state_timeout_again() -> None:
    """While the flowtable holds it, conntrack shows the day-long timeout the kernel sets (NF_CT_DAY, topped
    up by the GC); handed back (at a FIN), its TCP state's timeout applies again, once."""
    clock = Clock()
    ct = Conntrack(clock)
    c, _ = _established(ct)
    ct.set_offload(c, hw=True)
    [r] = ct.snapshot()
    assert r.timeout_s == 86400 and "HW_OFFLOAD" in r.status
    clock.advance(50000)
    assert ct.gc() == [] and (c.timeout_ns - clock.now) // NS == 86400
    ct.fixup(c)
    assert not c.status & Status.OFFLOAD and (c.timeout_ns - clock.now) // NS == 5 * 86400
    _walk(ct, clock, c, [(O, FIN | ACK, S.FIN_WAIT, 120), (R, FIN | ACK, S.LAST_ACK, 30), (O, ACK, S.TIME_WAIT, 120)])
    clock.advance(10)
    ct.fixup(c)  # the flow's teardown after the close timeout must not restart TIME_WAIT
    assert (c.timeout_ns - clock.now) // NS == 110


def test_gc_expires_each_connection_on_time_through_refreshes_closes_and_offload() -> None:
    """10,000 UDP connections with deadlines spread over 30 s, some refreshed (later), some closed earlier
    (a TCP RST moves the deadline to 10 s) and some offloaded (a day): each GC run destroys exactly the
    connections whose deadline passed, within the second, as the full scan it replaced did."""
    clock = Clock()
    ct = Conntrack(clock)
    conns = []
    for i in range(10_000):
        c = ct.new(CtTuple.make("10.0.1.10", "192.0.2.20", "udp", 1024 + i, 53))
        ct.packet(c, O, length=40)  # unreplied: 30 s
        assert ct.confirm(c)
        conns.append(c)
        if i % 100 == 99:
            clock.advance(0.3)  # creation spread over 30 s
    tcp = ct.new(T)
    for d, f in ((O, SYN), (R, SYN | ACK), (O, ACK)):
        ct.packet(tcp, d, length=52, tcp_flags=f)
        ct.confirm(tcp)
    refreshed, offloaded = conns[:50], conns[50:60]
    for c in refreshed:
        ct.packet(c, O, length=40)  # a later deadline: stays filed where it was, moved on when visited
    for c in offloaded:
        ct.set_offload(c)
    ct.packet(tcp, R, length=52, tcp_flags=RST)  # 5 days -> 10 s: filed again, earlier
    gone: dict[int, int] = {}
    for _ in range(80):
        clock.advance(1)
        for c in ct.gc():
            gone[c.id] = clock.now
    for c in [*conns, tcp]:
        if c in offloaded:
            assert c.id not in gone and c.timeout_ns > clock.now
            continue
        assert c.id in gone, c
        assert c.timeout_ns <= gone[c.id] < c.timeout_ns + 2 * NS  # on the first run after its deadline
    assert len(ct) == len(offloaded)
