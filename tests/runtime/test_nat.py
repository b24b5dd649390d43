"""NAT port allocation: keeps the port when free, never clashes, uses Linux's port classes."""

from __future__ import annotations

import random

import pytest

from runtime.config import parse_config
from runtime.conntrack import Conntrack, CtTuple
from runtime.nat import Nat, NatError

CFG = """
[[ports]]
port = 1
mac = "02:00:00:00:01:01"
ipv4 = "10.0.1.1/24"
[[ports]]
port = 4
name = "wan"
mac = "02:00:00:00:01:04"
ipv4 = "192.0.2.1/24"
[[nat.masquerade]]
out = "wan"
[[nat.dnat]]
in = "wan"
proto = "tcp"
dport = 8080
to = "10.0.1.10"
to_port = 80
"""
WAN = bytes([192, 0, 2, 1])


def setup(cfg: str = CFG) -> tuple[Conntrack, Nat]:
    ct = Conntrack(lambda: 0)
    return ct, Nat(parse_config(cfg), ct.taken, rng=random.Random(1), is_local=lambda a: a == WAN)


def track(ct: Conntrack, nat: Nat, t: CtTuple) -> CtTuple:
    reply = nat.reply_tuple(t, nat.snat_target(t, 4), nat.dnat_target(t, 1))
    c = ct.new(t, reply)
    ct.set_reply(c, reply)
    assert ct.confirm(c)
    return reply


def test_masquerade_keeps_port_then_allocates_unique() -> None:
    ct, nat = setup()
    a = CtTuple.make("10.0.1.10", "192.0.2.20", "tcp", 40000, 80)
    assert track(ct, nat, a) == CtTuple.make("192.0.2.20", "192.0.2.1", "tcp", 80, 40000)
    b = CtTuple.make("10.0.1.11", "192.0.2.20", "tcp", 40000, 80)  # same port from another host
    rb = track(ct, nat, b)
    assert rb.dst == WAN and rb.dport != 40000 and 1024 <= rb.dport <= 65535
    c = CtTuple.make("10.0.1.12", "192.0.2.21", "tcp", 40000, 80)  # other peer: the port can be reused
    assert track(ct, nat, c).dport == 40000


def test_port_classes_and_icmp_ids() -> None:
    ct, nat = setup()
    track(ct, nat, CtTuple.make("10.0.1.10", "192.0.2.20", "udp", 123, 123))
    low = track(ct, nat, CtTuple.make("10.0.1.11", "192.0.2.20", "udp", 123, 123))
    assert 1 <= low.dport <= 511
    track(ct, nat, CtTuple.make("10.0.1.10", "192.0.2.20", "udp", 700, 53))
    mid = track(ct, nat, CtTuple.make("10.0.1.11", "192.0.2.20", "udp", 700, 53))
    assert 600 <= mid.dport <= 1023
    track(ct, nat, CtTuple.make("10.0.1.10", "192.0.2.20", "icmp", 9, 9))
    other = track(ct, nat, CtTuple.make("10.0.1.11", "192.0.2.20", "icmp", 9, 9))
    assert other.sport == other.dport != 9  # ICMP: the id is both "ports"


def test_never_clashes_until_exhausted() -> None:
    cfg = CFG.replace('[[nat.masquerade]]\nout = "wan"', '[[nat.snat]]\nout = "wan"\nto = "192.0.2.1"\nports = "5000-5063"')
    ct, nat = setup(cfg)
    seen = set()
    for i in range(64):
        r = track(ct, nat, CtTuple.make(f"10.0.1.{i + 2}", "192.0.2.20", "tcp", 40000, 80))
        assert 5000 <= r.dport <= 5063
        seen.add(r)
    assert len(seen) == 64
    with pytest.raises(NatError, match=r"no free port on 192\.0\.2\.1 in 5000-5063"):
        track(ct, nat, CtTuple.make("10.0.1.200", "192.0.2.20", "tcp", 40000, 80))


def test_many_allocations_unique() -> None:
    ct, nat = setup()
    replies = {track(ct, nat, CtTuple.make(f"10.0.{i // 250}.{i % 250 + 1}", "192.0.2.20", "udp", 5000, 53))
               for i in range(2000)}
    assert len(replies) == 2000 and all(r.dst == WAN for r in replies)


def test_dnat_port_forward() -> None:
    _ct, nat = setup()
    t = CtTuple.make("192.0.2.20", "192.0.2.1", "tcp", 50000, 8080)
    d = nat.dnat_target(t, 4)
    assert d is not None and d.port == 80
    reply = nat.reply_tuple(t, None, d)
    assert reply == CtTuple.make("10.0.1.10", "192.0.2.20", "tcp", 80, 50000)
    assert nat.dnat_target(t, 1) is None  # only from the WAN port
    assert nat.dnat_target(CtTuple.make("192.0.2.20", "192.0.2.1", "udp", 1, 8080), 4) is None
