"""The controller: holds one switch, pushes its pipeline, runs the slow path on every punted packet and
drives the flowtable (:mod:`runtime.offloader`).

Threads: the client's stream thread only queues events; one worker thread owns the slow path (conntrack,
NAT, neighbours, the flowtable's offers and fast path) and processes packet-ins in arrival order, plus a
tick every second (conntrack GC, flowtable GC, neighbour probes). The offload engine writes to the switch
from its own thread. Other threads read state through snapshots (conntrack and the flowtable have locks).
On reconnection (the switch restarted) the worker re-pushes the pipeline -- skipped when the cookie
matches -- and reconciles the flow tables (re-installing what a restarted switch lost).

Mastership: when another client takes primary with a higher election id, the controller becomes a backup.
It says so at WARNING, stops the offload engine's writes at once (a backup's writes are refused; queued work
waits, flows stay on the software path), and keeps its configured election id: it does not bid higher, so
two controllers never fight, and it stays backup until the other client leaves or lowers its id. The switch
then makes it primary again (PI and softswitch promote the next highest live client and tell every client),
and the controller re-checks the pipeline and reconciles the flow tables as at start, since the other
primary may have changed them. While backup no packet-ins arrive (the switch sends them to the primary
only) and packet-outs would be dropped, so the slow path forwards nothing: the primary handles traffic.

With ``kernel`` options the slow path is the Linux kernel (:mod:`runtime.kernel`): punted packets go to its
TAPs, a TAP thread sends what the kernel transmits, and a ctnetlink thread feeds the kernel's connections
to the flowtable.
"""

from __future__ import annotations

import ipaddress
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .client import ElectionId, StreamHandlers, SwitchClient, format_election_id
from .config import RouterConfig
from .conntrack import Conn, Conntrack, CtEvent, CtRecord, Timeouts
from .entities import IdleTimeout, PacketIn
from .errors import P4RuntimeError
from .kernel.offload import KernelOffloader
from .kernel.slowpath import KernelOptions, KernelSlowPath, default_netns
from .offloader import Offloader
from .pipeline import Pipeline
from .slowpath import SlowPath
from .tls import TlsConfig

log = logging.getLogger(__name__)

PUNT_ENUM = "punt_reason_t"


#: How long a punted packet may wait for the worker before it is dropped unhandled. By then its sender has
#: sent it again (TCP: a SYN after 1 s, anything else after its retransmission timer, 200 ms at least),
#: and that copy waits in the queue behind it: handling both doubles the work of an overloaded slow path,
#: which makes every packet wait longer still. A shorter bound drops packets that are their sender's only
#: copy. Single runs of 30,000 connections on softswitch (noisy): flows expired while active in the ramp,
#: no bound 2,180, 100 ms 298, 1 s 43; packet-ins to close them all, 156,000 / 287,000 / 197,000.
PACKET_MAX_WAIT_S = 1.0


@dataclass(frozen=True, slots=True)
class _Event:
    kind: str  # "packet", "idle", "connected", "disconnected", "call"
    payload: Any = None
    at: float = 0.0  # when a packet-in was queued (time.monotonic())


@dataclass(slots=True)
class Mastership:
    """Whether the controller is the switch's primary, since when, and how often that changed."""

    primary: bool = True
    since: float = 0.0  # wall-clock time of the last change (time.time())
    primary_election_id: ElectionId | None = None  # the primary's, as the switch last said
    lost: int = 0
    regained: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"primary": self.primary, "since": self.since,
                "since_utc": datetime.fromtimestamp(self.since, UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
                "primary_election_id": format_election_id(self.primary_election_id), "lost": self.lost,
                "regained": self.regained}


class Controller:
    """A context manager: ``with Controller(config, pipeline, "127.0.0.1:9559") as ctl: ctl.wait()``."""

    def __init__(self, config: RouterConfig, pipeline: Pipeline, address: str, *, device_id: int = 1,
                 election_id: ElectionId = (0, 1), clock: Callable[[], int] = time.monotonic_ns,
                 timeouts: Timeouts | None = None, tcp_loose: bool = True, queue_size: int = 65536,
                 packet_max_wait: float = PACKET_MAX_WAIT_S, flush_on_stop: bool = True,
                 connect_timeout: float = 10.0, tls: TlsConfig | None = None,
                 kernel: KernelOptions | None = None) -> None:
        self.config = config
        self.connect_timeout = connect_timeout
        self.pipeline = pipeline
        self.clock = clock
        self.client = SwitchClient(address, device_id=device_id, election_id=election_id, p4info=pipeline.p4info,
                                   handlers=StreamHandlers(self._on_packet_in, self._on_idle_timeout,
                                                           self._on_connected, self._on_disconnected), tls=tls)
        self.mastership = Mastership(since=time.time(), primary_election_id=election_id)
        self.conntrack = Conntrack(clock, timeouts=timeouts, tcp_loose=tcp_loose)
        self.conntrack.subscribe(self._log_event)
        # The slow path: offloadgen's model of the forward path, or the Linux kernel (--slowpath kernel)
        self.kernel: KernelSlowPath | None = None
        self.slowpath: SlowPath | KernelSlowPath
        if kernel is None:
            sp = SlowPath(config, clock=clock, emit=self._emit, conntrack=self.conntrack)
            self.slowpath = sp
            self.offloader: Offloader = Offloader(config, pipeline, self.conntrack, sp, self.client, self._emit, clock,
                                                  post=lambda fn: self._put(_Event("call", fn)))
        else:
            self.kernel = KernelSlowPath(config, kernel, self._emit, default_name=default_netns(address, device_id))
            self.slowpath = self.kernel
            self.offloader = KernelOffloader(config, pipeline, self.kernel, self.client, self._emit, clock)
        self.flush_on_stop = flush_on_stop
        try:
            self.punt_reasons = pipeline.p4info.serializable_enum(PUNT_ENUM)
        except LookupError:
            self.punt_reasons = {}
        self.on_reconnect: list[Callable[[], None]] = []
        self.on_idle_timeout: list[Callable[[IdleTimeout], None]] = []
        self.on_tick: list[Callable[[], None]] = []
        # A SimpleQueue (C, no Condition per put and get: the stream thread puts every packet-in) bounded by
        # hand: past queue_size packet-ins are dropped and counted, as a NIC drops at a full ring.
        self._events: queue.SimpleQueue[_Event] = queue.SimpleQueue()
        self.queue_size = queue_size
        self.packet_max_wait = packet_max_wait
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._start_connects = 0
        self.dropped_events = 0
        self.queue_wait_us_max = 0  # the longest a packet-in waited for the worker
        self.stale_dropped = 0  # packet-ins dropped unhandled for waiting longer than packet_max_wait
        self.tx_errors = 0
        self._repush_pending = False  # the last re-push after a reconnection failed: the tick retries it
        self.tick_us = dict.fromkeys(("slowpath_tick_us_last", "slowpath_tick_us_max", "flowtable_gc_us_last",
                                      "flowtable_gc_us_max"), 0)

    # ------------------------------------------------------------------ lifecycle

    def start(self, connect_timeout: float | None = None) -> Controller:
        timeout = self.connect_timeout if connect_timeout is None else connect_timeout
        if self.kernel is None:
            return self._start(timeout)
        self.kernel.open()
        try:
            return self._start(timeout)
        except BaseException:
            # not started: no TAPs or namespace left behind (unless kept for a successor to adopt)
            self.kernel.close(keep=not self.flush_on_stop)
            raise

    def _start(self, connect_timeout: float) -> Controller:
        self.client.connect(connect_timeout)
        pushed = self.client.set_pipeline(self.pipeline)
        log.info("connected to %s; pipeline %s", self.client.address, "pushed" if pushed else "already there")
        self._start_connects = self.client.connect_count
        self.offloader.start()
        if self.kernel is not None:
            self.kernel.start()
        self._stop.clear()
        self._worker = threading.Thread(target=self._run, name="controller", daemon=True)
        self._worker.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._events.put(_Event("wake"))
        if self._worker is not None:
            self._worker.join(timeout=10)
            self._worker = None
        try:
            self.offloader.stop(flush=self.flush_on_stop)
        except Exception:
            log.exception("stopping the flowtable failed")
        self.client.close()
        if self.kernel is not None:
            self.kernel.close(keep=not self.flush_on_stop)
        log.info("controller stopped")

    def wait(self, stop: threading.Event | None = None) -> None:
        """Block until ``stop`` is set (the run command's signal handler sets it)."""
        ev = stop or threading.Event()
        while not ev.is_set() and not self._stop.is_set():
            ev.wait(0.5)

    def __enter__(self) -> Controller:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Run ``fn`` on the worker thread (where the slow-path state lives) and return its result."""
        done = threading.Event()
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:
                box["error"] = exc
            done.set()

        self._events.put(_Event("call", run))
        if not done.wait(timeout):
            raise TimeoutError("the controller did not run the call in time")
        if "error" in box:
            raise box["error"]
        return box.get("value")

    # ------------------------------------------------------------------ observing

    def snapshot(self) -> list[CtRecord]:
        if isinstance(self.offloader, KernelOffloader):
            return self.offloader.snapshot()
        return self.conntrack.snapshot()

    def stats(self) -> dict[str, int]:
        out = dict(self.slowpath.stats)
        out.update({f"conntrack_{k}": v for k, v in self.conntrack.stats.items()})
        out["conntrack_entries"] = len(self.conntrack)
        if isinstance(self.offloader, KernelOffloader):
            out.update(self.offloader.conntrack_stats())
        out["packet_in"] = self.client.packets_in
        out["packet_out"] = self.client.packets_out
        out["queue_dropped"] = self.dropped_events
        out["queue_wait_us_max"] = self.queue_wait_us_max
        out["queue_stale_dropped"] = self.stale_dropped
        out["slowpath_packets"] = self.slowpath.stats["rx"]
        out["fastpath_packets"] = self.offloader.ft.counters.fastpath_packets
        out["hw_packets"] = self.offloader.hw_packets
        out["tx_errors"] = self.tx_errors
        out["log_lines_suppressed"] = self.offloader.lines.suppressed_total
        out.update(self.tick_us)
        return out

    def status_handlers(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        """What the status endpoint serves (``offloadgen flows``, ``stats``, ``entries``, ``conntrack``)."""
        return {
            "flows": lambda req: self.offloader.flows(),
            "conntrack": lambda req: [r.to_dict() for r in self.snapshot()],
            "stats": lambda req: {"flowtable": self.offloader.stats(), "controller": self.stats(),
                                  "mastership": self.mastership.to_dict()},
            "entries": lambda req: self.offloader.entries(),
        }

    # ------------------------------------------------------------------ stream callbacks (stream thread)

    def _put(self, ev: _Event) -> None:
        if ev.kind == "packet" and self._events.qsize() >= self.queue_size:
            self.dropped_events += 1
            return
        self._events.put(ev)

    def _on_packet_in(self, pin: PacketIn) -> None:
        self._put(_Event("packet", pin, time.monotonic()))

    def _on_idle_timeout(self, note: IdleTimeout) -> None:
        self._put(_Event("idle", note))

    def _on_connected(self, primary: bool) -> None:
        if not primary:
            # Gate the writes here, on the stream thread, not when the worker gets to the event: the engine
            # would otherwise keep writing as a backup meanwhile and have every batch refused.
            self._pause_writes()
        self._put(_Event("connected", (primary, self.client.connect_count, self.client.primary_election_id)))

    def _on_disconnected(self, why: str) -> None:
        self._put(_Event("disconnected", why))

    # ------------------------------------------------------------------ worker

    def _emit(self, port: int, frame: bytes) -> None:
        try:
            self.client.packet_out(frame, egress_port=port)
        except P4RuntimeError as exc:
            self.tx_errors += 1
            log.debug("packet-out to port %d failed: %s", port, exc)

    def _run(self) -> None:
        next_tick = time.monotonic() + 1.0
        while not self._stop.is_set():
            timeout = max(0.0, next_tick - time.monotonic())
            try:
                ev = self._events.get(timeout=timeout)
            except queue.Empty:
                ev = None
            if ev is not None and ev.at:
                waited = time.monotonic() - ev.at
                if waited > self.packet_max_wait:
                    self.stale_dropped += 1
                    ev = None
                elif waited * 1e6 > self.queue_wait_us_max:
                    self.queue_wait_us_max = int(waited * 1e6)
            if ev is not None:
                try:
                    self._dispatch(ev)
                except Exception:
                    log.exception("controller: handling %s failed", ev.kind)
            if time.monotonic() >= next_tick:
                next_tick = time.monotonic() + 1.0
                # Each on its own: a failure in one (say the neighbour probes) must not stop the flowtable's
                # GC, which is what removes closed flows and queues their hardware deletes. The two passes
                # are timed for `offloadgen stats`.
                t0 = time.perf_counter_ns()
                self._guarded(self.slowpath.tick)
                t1 = time.perf_counter_ns()
                self._guarded(self.offloader.tick)
                self._tick_times(t0, t1, time.perf_counter_ns())
                for hook in self.on_tick:
                    self._guarded(hook)
                if self._repush_pending and self.client.primary:
                    self._guarded(self._reconnected)

    @staticmethod
    def _guarded(work: Callable[[], None]) -> None:
        try:
            work()
        except Exception:
            log.exception("controller: periodic work %s failed", getattr(work, "__qualname__", work))

    def _tick_times(self, t0: int, t1: int, t2: int) -> None:
        """Keep how long the periodic passes took: the worker forwards no packet while they run, so their
        length is the longest a punted packet can wait behind them (shown by ``offloadgen stats --json``)."""
        ct_us, ft_us = (t1 - t0) // 1000, (t2 - t1) // 1000
        self.tick_us["slowpath_tick_us_last"] = ct_us
        self.tick_us["slowpath_tick_us_max"] = max(self.tick_us["slowpath_tick_us_max"], ct_us)
        self.tick_us["flowtable_gc_us_last"] = ft_us
        self.tick_us["flowtable_gc_us_max"] = max(self.tick_us["flowtable_gc_us_max"], ft_us)

    def _dispatch(self, ev: _Event) -> None:
        if ev.kind == "packet":
            pin: PacketIn = ev.payload
            port = pin.metadata.get("ingress_port", 0)
            if self.offloader.fast_forward(port, pin.payload):
                return
            reason = self.punt_reasons.get(pin.metadata.get("reason", -1), "")
            self.slowpath.handle(port, pin.payload, reason)
        elif ev.kind == "call":
            ev.payload()
        elif ev.kind == "idle":
            self.offloader.on_idle_timeout(ev.payload)
            for hook in self.on_idle_timeout:
                hook(ev.payload)
        elif ev.kind == "connected":
            primary, count, primary_eid = ev.payload
            if primary and not self.client.primary:
                return  # stale: a newer arbitration update (or a lost stream) came since; its event follows
            self.mastership.primary_election_id = primary_eid
            new_stream = count > self._start_connects
            if not primary:
                self._start_connects = count
                self._mastership_lost(primary_eid)
            elif not self.mastership.primary:
                self._start_connects = count
                self._mastership_regained()
            elif new_stream:
                self._start_connects = count
                self._reconnected()
        elif ev.kind == "disconnected":
            log.warning("switch connection lost: %s", ev.payload)

    def _pause_writes(self) -> None:
        engine = self.offloader.engine
        if engine is not None:
            engine.pause()

    def _mastership_lost(self, primary_eid: ElectionId | None) -> None:
        self._pause_writes()
        if not self.mastership.primary:
            return
        self.mastership.primary = False
        self.mastership.since = time.time()
        self.mastership.lost += 1
        log.warning("mastership lost: %s made another client primary for device %d (its election id %s, ours %s); "
                    "backup now: no writes to the switch, its traffic goes to that controller; primary again when "
                    "it leaves", self.client.address, self.client.device_id, format_election_id(primary_eid),
                    format_election_id(self.client.election_id))

    def _mastership_regained(self) -> None:
        self.mastership.primary = True
        self.mastership.since = time.time()
        self.mastership.regained += 1
        log.warning("mastership regained: primary again for device %d on %s; checking the pipeline and "
                    "reconciling the flow tables", self.client.device_id, self.client.address)
        try:
            self._reconnected()
        finally:
            # after the reconciliation, so the queued work meets tables that match the flowtable again; and
            # only if still primary: a newer loss may have paused the engine (stream thread) since this event
            engine = self.offloader.engine
            if engine is not None and self.client.primary:
                engine.resume()

    def _reconnected(self) -> None:
        try:
            self.client.set_pipeline(self.pipeline)
        except P4RuntimeError as exc:
            # Not given up on: the switch is there (it just arbitrated). The tick tries again each second
            # while we are primary, so a transient failure cannot leave the switch without a pipeline.
            log.error("re-pushing the pipeline after reconnection failed: %s; trying again in a second", exc)
            self._repush_pending = True
            return
        self._repush_pending = False
        log.info("primary on %s with the pipeline in place", self.client.address)
        self.offloader.reconcile()
        for hook in self.on_reconnect:
            hook()

    def _log_event(self, event: CtEvent, conn: Conn) -> None:
        if event is CtEvent.NEW and self.offloader.lines.allow("new connection"):
            o, r = conn.tuples
            nat = ""
            if conn.nat:
                nat = f" (reply {r})"
            log.info("new connection %d: %s %s%s", conn.id, _proto(conn.proto), o, nat)
        elif event is CtEvent.DESTROY:
            log.debug("connection %d gone (%s)", conn.id, conn.state_name())


def _proto(p: int) -> str:
    return {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}.get(p, str(p))


def addr(b: bytes) -> str:
    return str(ipaddress.ip_address(b))
