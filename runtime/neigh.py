"""The neighbour table (ARP for IPv4, neighbour discovery for IPv6) with a queue of packets waiting for
resolution, like the kernel's neighbour subsystem: INCOMPLETE -> REACHABLE -> STALE, a few probes a second
apart, then FAILED (queued packets dropped and the caller told, so it can send host unreachable)."""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

NS = 1_000_000_000


class NeighState(enum.Enum):
    INCOMPLETE = "INCOMPLETE"
    REACHABLE = "REACHABLE"
    STALE = "STALE"
    FAILED = "FAILED"


@dataclass(slots=True)
class Neighbour:
    port: int
    addr: bytes
    mac: bytes | None = None
    state: NeighState = NeighState.INCOMPLETE
    updated_ns: int = 0
    probes: int = 0
    next_probe_ns: int = 0
    queue: deque[bytes] = field(default_factory=deque)


@dataclass(frozen=True, slots=True)
class NeighRecord:
    port: int
    addr: bytes
    mac: bytes | None
    state: str


class NeighbourTable:
    """Keyed by (port, address). ``probe`` is called to send a solicitation (ARP request / NS)."""

    def __init__(self, probe: Callable[[int, bytes], None], *, clock: Callable[[], int],
                 reachable_s: float = 30.0, retrans_s: float = 1.0, max_probes: int = 3, queue_len: int = 64) -> None:
        self._probe = probe
        self._clock = clock
        self.reachable_ns = int(reachable_s * NS)
        self.retrans_ns = int(retrans_s * NS)
        self.max_probes = max_probes
        self.queue_len = queue_len
        self._table: dict[tuple[int, bytes], Neighbour] = {}
        self.dropped = 0

    def lookup(self, port: int, addr: bytes) -> bytes | None:
        """The MAC if known (REACHABLE or STALE; a STALE one is re-probed in the background)."""
        n = self._table.get((port, addr))
        if n is None or n.mac is None:
            return None
        now = self._clock()
        if n.state is NeighState.REACHABLE and now - n.updated_ns > self.reachable_ns:
            n.state = NeighState.STALE
        if n.state is NeighState.STALE and n.next_probe_ns <= now:
            n.next_probe_ns = now + self.retrans_ns
            self._probe(port, addr)
        return n.mac

    def resolve(self, port: int, addr: bytes, frame: bytes) -> None:
        """Queue ``frame`` (a complete IP packet, MACs to be filled in) until ``addr`` answers."""
        key = (port, addr)
        n = self._table.get(key)
        now = self._clock()
        if n is None or n.state is NeighState.FAILED:
            n = Neighbour(port, addr, updated_ns=now)
            self._table[key] = n
        if len(n.queue) >= self.queue_len:
            n.queue.popleft()
            self.dropped += 1
        n.queue.append(frame)
        if n.probes == 0:
            n.probes = 1
            n.next_probe_ns = now + self.retrans_ns
            self._probe(port, addr)

    def learn(self, port: int, addr: bytes, mac: bytes, *, create: bool = True) -> list[bytes]:
        """Record ``addr`` at ``mac``; returns the packets that were waiting for it."""
        key = (port, addr)
        n = self._table.get(key)
        if n is None:
            if not create:
                return []
            n = Neighbour(port, addr)
            self._table[key] = n
        n.mac, n.state, n.updated_ns, n.probes = mac, NeighState.REACHABLE, self._clock(), 0
        waiting = list(n.queue)
        n.queue.clear()
        return waiting

    def tick(self) -> list[tuple[Neighbour, list[bytes]]]:
        """Re-probe incomplete entries; returns the ones that failed with their dropped packets."""
        now = self._clock()
        failed = []
        for n in list(self._table.values()):
            if n.state is not NeighState.INCOMPLETE or n.next_probe_ns > now:
                continue
            if n.probes >= self.max_probes:
                n.state = NeighState.FAILED
                dropped = list(n.queue)
                n.queue.clear()
                self.dropped += len(dropped)
                failed.append((n, dropped))
                continue
            n.probes += 1
            n.next_probe_ns = now + self.retrans_ns
            self._probe(n.port, n.addr)
        return failed

    def snapshot(self) -> list[NeighRecord]:
        return [NeighRecord(n.port, n.addr, n.mac, n.state.value) for n in self._table.values()]
