"""Small value types shared by the flowtable modules: directions, flow tuples, flags, the clock."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ..conntrack import Dir

__all__ = ["FLAG_NAMES", "IPPROTO_TCP", "IPPROTO_UDP", "NS", "PROTO_NAMES", "Clock", "Dir", "FlowFlag", "FlowTuple",
           "flag_names", "monotonic_clock"]

IPPROTO_TCP = 6
IPPROTO_UDP = 17
PROTO_NAMES = {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp"}

NS = 1_000_000_000

#: Monotonic nanoseconds; injected everywhere so tests control time without sleeping.
Clock = Callable[[], int]


def monotonic_clock() -> int:
    return time.monotonic_ns()


#: A flow-table entry's identity in a bulk counter read: the table's short name, then the exact-match
#: fields' values as integers in the order of their names (:func:`~.offload.entry_key`,
#: :func:`~.offload.flow_key`). Flat, without the names, because a read keeps one per entry and the offload
#: engine one per hardware flow direction (:attr:`~.core.Flow.hw_keys`): at 60,000 entries the names'
#: pairs cost ~20 MB and a slower hash.
EntryKey = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class FlowTuple:
    """``struct flow_offload_tuple``'s key part: what a packet of one direction looks like on arrival.

    Addresses are raw network-order bytes (4 for IPv4, 16 for IPv6) so the fast path can build a lookup key
    by slicing the frame; the same six fields are the P4 flow table's exact-match key.
    """

    in_port: int
    src: bytes
    dst: bytes
    proto: int
    sport: int
    dport: int

    @property
    def family(self) -> int:
        return 4 if len(self.src) == 4 else 6

    @property
    def src_ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return ipaddress.ip_address(self.src)

    @property
    def dst_ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return ipaddress.ip_address(self.dst)

    @classmethod
    def make(cls, in_port: int, src: str, dst: str, proto: int | str, sport: int, dport: int) -> FlowTuple:
        """Convenience constructor from text addresses (``"10.0.0.1"``) and a protocol name or number."""
        p = {"tcp": IPPROTO_TCP, "udp": IPPROTO_UDP}[proto] if isinstance(proto, str) else proto
        return cls(in_port, ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed, p, sport, dport)

    def __str__(self) -> str:
        proto = PROTO_NAMES.get(self.proto, str(self.proto))
        return (f"{proto} port={self.in_port} src={self.src_ip} dst={self.dst_ip} "
                f"sport={self.sport} dport={self.dport}")


class FlowFlag:
    """``NF_FLOW_*`` bits (include/net/netfilter/nf_flow_table.h), plus two of our own.

    SNAT/DNAT: the connection is NATed. CLOSING: FIN/RST seen, hardware entries go, conntrack sees every
    further packet (the slow path carries them); the flow stays listed until the close timeout. TEARDOWN: being removed; lookups miss it. HW: meant for hardware (the flowtable
    has offload on). HW_DYING: a hardware delete was queued. HW_DEAD: the hardware delete completed.
    HW_PENDING: one offload work item is queued or running (at most one per flow). HW_REFRESH: a hardware
    add failed or must be redone; the next refresh from the software path re-queues it (the 5.x kernel's
    flag of this name). HW_OFFLOADED: the switch acknowledged both directions (the ct's IPS_HW_OFFLOAD bit;
    ``[HW_OFFLOAD]``). HW_UNSUPPORTED: the flow's actions cannot be expressed by the P4 program, so it stays
    in software for good.

    Plain ``int`` constants on purpose, not an ``enum.IntFlag``: the GC, the fast path and the offload
    engine test these bits for every flow on every pass, and each ``&`` on an ``IntFlag`` builds a new enum
    member (at 30,000 flows that was 12-14 % of the worker). :func:`flag_names` names a value's bits.
    """

    SNAT: Final = 1 << 0
    DNAT: Final = 1 << 1
    CLOSING: Final = 1 << 2
    TEARDOWN: Final = 1 << 3
    HW: Final = 1 << 4
    HW_DYING: Final = 1 << 5
    HW_DEAD: Final = 1 << 6
    HW_PENDING: Final = 1 << 7
    HW_REFRESH: Final = 1 << 8
    HW_OFFLOADED: Final = 1 << 9
    HW_UNSUPPORTED: Final = 1 << 10


#: Every flag's name and bit, in bit order (for ``offloadgen flows`` and error messages).
FLAG_NAMES: tuple[tuple[str, int], ...] = tuple(
    (k, v) for k, v in vars(FlowFlag).items() if k.isupper() and isinstance(v, int))


def flag_names(flags: int) -> tuple[str, ...]:
    """The names of the bits set in ``flags``, lowest bit first."""
    return tuple(name for name, bit in FLAG_NAMES if flags & bit)
