"""NAT: which rule applies to a new connection, and a reply tuple that never clashes.

DNAT rules (port forwards) are looked up before routing (PREROUTING), SNAT/masquerade after it
(POSTROUTING), as in Linux. Allocation follows ``nf_nat_core.c``'s ``get_unique_tuple``: keep the original
port when the resulting reply tuple is free; otherwise search the port class the original port is in
(1-511, 600-1023, 1024-65535; ICMP ids 0-65535) or the rule's range from a random offset, with at most 128
tries per round and smaller windows after. Where the kernel would give up, a final linear scan makes sure
a free tuple is found whenever one exists; only a full range fails.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable
from dataclasses import dataclass

from .config import DnatRule, PortRange, RouterConfig, SnatRule
from .conntrack import IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, CtTuple

MAX_ATTEMPTS = 128


class NatError(RuntimeError):
    """No free tuple in the range (the packet is dropped)."""


@dataclass(frozen=True, slots=True)
class SnatTarget:
    addr: bytes
    ports: PortRange | None
    rule: SnatRule


@dataclass(frozen=True, slots=True)
class DnatTarget:
    addr: bytes
    port: int | None
    rule: DnatRule


def _has_ports(proto: int) -> bool:
    return proto in (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP, IPPROTO_ICMPV6)


class Nat:
    def __init__(self, config: RouterConfig, taken: Callable[[CtTuple], bool], *, rng: random.Random | None = None,
                 is_local: Callable[[bytes], bool] | None = None) -> None:
        self.config = config
        self.taken = taken
        self.rng = rng or random.Random()
        self.is_local = is_local or (lambda addr: False)
        self.stats = {"allocated": 0, "kept": 0, "failed": 0}
        # Every new connection is matched against the SNAT rules: their source prefixes as (length, network,
        # mask) integers, and each port's primary address per family, worked out once instead of per packet.
        self._snat_src = [None if rule.src is None else
                          [(n.max_prefixlen // 8, int(n.network_address), int(n.netmask)) for n in rule.src]
                          for rule in config.snat]
        self._primary: dict[tuple[int, int], bytes | None] = {}
        for pc in config.ports.values():
            for family in (4, 6):
                primary = pc.primary(family)
                ok = primary is not None and not (family == 6 and primary.ip.is_link_local)
                self._primary[(pc.port, family)] = primary.ip.packed if ok and primary is not None else None

    def dnat_target(self, orig: CtTuple, in_port: int) -> DnatTarget | None:
        for rule in self.config.dnat:
            if rule.proto != orig.proto or orig.dport not in rule.dport:
                continue
            if rule.in_port is not None and rule.in_port != in_port:
                continue
            if rule.to.version != orig.family:
                continue
            if rule.dst is not None:
                if rule.dst.packed != orig.dst:
                    continue
            elif not self.is_local(orig.dst):
                continue
            port = None
            if rule.to_port is not None:
                port = rule.to_port + (orig.dport - rule.dport.lo)  # a range maps onto a range
            return DnatTarget(rule.to.packed, port, rule)
        return None

    def snat_target(self, orig: CtTuple, out_port: int) -> SnatTarget | None:
        src = int.from_bytes(orig.src, "big")
        width = len(orig.src)
        for rule, nets in zip(self.config.snat, self._snat_src, strict=True):
            if rule.out_port != out_port:
                continue
            if nets is not None and not any(w == width and src & mask == net for w, net, mask in nets):
                continue
            if rule.to is not None:
                if rule.to.version != orig.family:
                    continue
                return SnatTarget(rule.to.packed, rule.ports, rule)
            addr = self._primary.get((out_port, orig.family))
            if addr is None:
                continue
            return SnatTarget(addr, rule.ports, rule)
        return None

    def reply_tuple(self, orig: CtTuple, snat: SnatTarget | None, dnat: DnatTarget | None) -> CtTuple:
        """The reply tuple after NAT, unique in the table (``get_unique_tuple``)."""
        # What the original direction's packets will look like after NAT:
        new_dst, new_dport = orig.dst, orig.dport
        if dnat is not None:
            new_dst = dnat.addr
            if dnat.port is not None and orig.proto in (IPPROTO_TCP, IPPROTO_UDP):
                new_dport = dnat.port
        new_src, new_sport = orig.src, orig.sport
        if snat is None:
            t = CtTuple(new_src, new_dst, orig.proto, new_sport, new_dport)
            if self.taken(t.invert()) and dnat is not None:
                raise NatError(f"port forward to {ipaddress.ip_address(new_dst)}:{new_dport} clashes with an "
                               "existing connection")
            return t.invert()
        new_src = snat.addr
        icmp = orig.proto in (IPPROTO_ICMP, IPPROTO_ICMPV6)

        def make(port: int) -> CtTuple:
            if icmp:
                return CtTuple(new_src, new_dst, orig.proto, port, port)
            return CtTuple(new_src, new_dst, orig.proto, port, new_dport)

        in_range = snat.ports is None or orig.sport in snat.ports
        first = make(orig.sport)
        if in_range and not self.taken(first.invert()):
            self.stats["kept"] += 1
            return first.invert()
        if not _has_ports(orig.proto):
            raise NatError(f"{ipaddress.ip_address(new_src)}: address already used for this peer")
        if snat.ports is not None:
            lo, size = snat.ports.lo, snat.ports.hi - snat.ports.lo + 1
        elif icmp:
            lo, size = 0, 65536
        elif orig.sport < 512:
            lo, size = 1, 511
        elif orig.sport < 1024:
            lo, size = 600, 424
        else:
            lo, size = 1024, 64512
        attempts = min(size, MAX_ATTEMPTS)
        off = self.rng.randrange(65536)
        while True:
            for _ in range(attempts):
                cand = make(lo + off % size)
                off += 1
                if not self.taken(cand.invert()):
                    self.stats["allocated"] += 1
                    return cand.invert()
            if attempts >= size or attempts < 16:
                break
            attempts //= 2
            off = self.rng.randrange(65536)
        for port in range(lo, lo + size):  # never give up while a tuple is free
            cand = make(port)
            if not self.taken(cand.invert()):
                self.stats["allocated"] += 1
                return cand.invert()
        self.stats["failed"] += 1
        raise NatError(f"no free {'id' if icmp else 'port'} on {ipaddress.ip_address(new_src)} in "
                       f"{lo}-{lo + size - 1} towards {ipaddress.ip_address(new_dst)}:{new_dport}")
