"""A P4Runtime client for one switch: arbitration as primary, the stream, writes, reads, pipeline push.

One stream thread per client runs the StreamChannel on gRPC's asyncio API in an event loop of its own and
calls the handlers given at construction (packet-in, idle-timeout, connected/disconnected); handlers run on
that thread and must not block -- the controller just queues the event. Messages to send (packet-outs) are
queued from any thread and the loop is woken only when it sleeps, not per message: at thousands of packets
a second, the blocking API's request-iterator and channel-spin threads and their hand-offs cost about a
third of the controller's CPU, and the asyncio stream sustains ~1.7x the pipelined round trips. Unary calls
(Write, Read, pipeline) use the blocking API from any thread, on a channel of their own.
When the stream breaks (the switch restarts, the network drops) the thread reconnects with exponential
backoff and arbitrates again; ``on_connected`` then fires again so the owner can re-push its pipeline (a
no-op when the switch's cookie matches) and re-install state. ``on_connected`` also fires when mastership
changes on a live stream: the server sends every client an arbitration update when the primary changes (OK
to the new primary, ALREADY_EXISTS to the backups, with the primary's election id), so a client that another
with a higher election id displaced learns it here, and learns it again when that client leaves. Several
clients, for several switches, can exist at once: nothing is module-global.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from p4.v1 import p4runtime_pb2, p4runtime_pb2_grpc

from .entities import (
    IdleTimeout,
    PacketIn,
    TableEntry,
    Value,
    decode_packet_in,
    encode_packet_out,
    table_read_entity,
)
from .errors import P4RuntimeError, decode_rpc_error
from .p4info import P4Info
from .pipeline import Pipeline
from .tls import TlsConfig, diagnose, open_aio_channel, open_channel

log = logging.getLogger(__name__)

ElectionId = tuple[int, int]  # (high, low)


@dataclass
class StreamHandlers:
    """Callbacks from the stream thread. Keep them short: queue the work, return."""

    on_packet_in: Callable[[PacketIn], None] | None = None
    on_idle_timeout: Callable[[IdleTimeout], None] | None = None
    on_connected: Callable[[bool], None] | None = None  # argument: primary?
    on_disconnected: Callable[[str], None] | None = None  # argument: why


class _Outbox:
    """Messages for the stream, put from any thread and sent from the stream's event loop in order. The loop
    is woken (a write to its self-pipe) only when the sender sleeps, so a burst of packet-outs costs one
    wake-up, not one per message. ``None`` ends the stream."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._q: collections.deque[p4runtime_pb2.StreamMessageRequest | None] = collections.deque()
        self._wake = asyncio.Event()
        self._sleeping = False

    def put(self, msg: p4runtime_pb2.StreamMessageRequest | None) -> None:
        self._q.append(msg)
        if self._sleeping:
            self._sleeping = False
            with contextlib.suppress(RuntimeError):  # the loop ended: the stream is gone anyway
                self.loop.call_soon_threadsafe(self._wake.set)

    async def messages(self) -> AsyncIterator[p4runtime_pb2.StreamMessageRequest]:
        q = self._q
        while True:
            while q:
                msg = q.popleft()
                if msg is None:
                    return
                yield msg
            # Say we sleep, then look again: a put() between the two sees the flag and wakes us, one before
            # it is found here.
            self._sleeping = True
            if q:
                self._sleeping = False
                continue
            await self._wake.wait()
            self._wake.clear()


class SwitchClient:
    """One P4Runtime connection to one device. A context manager: ``with SwitchClient(addr) as c: ...``."""

    def __init__(self, address: str, *, device_id: int = 1, election_id: ElectionId = (0, 1),
                 p4info: P4Info | None = None, handlers: StreamHandlers | None = None,
                 reconnect: bool = True, backoff: tuple[float, float] = (0.1, 5.0), rpc_timeout: float = 30.0,
                 name: str | None = None, tls: TlsConfig | None = None) -> None:
        self.address = address
        self.tls = tls
        self.device_id = device_id
        self.election_id = election_id
        self.p4info = p4info
        self.handlers = handlers or StreamHandlers()
        self.reconnect = reconnect
        self.backoff = backoff
        self.rpc_timeout = rpc_timeout
        self.name = name or address
        self._channel: grpc.Channel | None = None
        self._stub: p4runtime_pb2_grpc.P4RuntimeStub | None = None
        self._outbox: _Outbox | None = None
        self._call: Any = None  # the live grpc.aio stream call (cancelled from other threads via its loop)
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._arbitrated = threading.Event()
        self._primary = False
        # the election id the switch last named as the primary's (ours when primary; None: no primary or untold)
        self.primary_election_id: ElectionId | None = None
        self.last_stream_error = ""
        self._lock = threading.Lock()
        self.connect_count = 0
        self.packets_out = 0
        self.packets_in = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def primary(self) -> bool:
        return self._primary

    @property
    def stub(self) -> p4runtime_pb2_grpc.P4RuntimeStub:
        if self._stub is None:
            raise P4RuntimeError("connect", "UNAVAILABLE", f"{self.name}: not connected; call connect() first")
        return self._stub

    def connect(self, timeout: float = 10.0, *, require_primary: bool = True) -> SwitchClient:
        """Open the channel, start the stream and wait for the arbitration answer.

        When no answer comes, the address is probed to say why (nothing there, TLS on one side only, wrong CA,
        client certificate wanted or refused); see :mod:`runtime.tls`."""
        if self.tls is not None:
            self.tls.check()  # unreadable files, a key of another certificate: say so now, not after the timeout
        self._closed.clear()
        self.last_stream_error = ""
        self._channel = open_channel(self.address, self.tls)
        self._stub = p4runtime_pb2_grpc.P4RuntimeStub(self._channel)
        self._thread = threading.Thread(target=self._stream_loop, name=f"p4rt-stream-{self.name}", daemon=True)
        self._thread.start()
        if not self._arbitrated.wait(timeout):
            last = self.last_stream_error
            self.close()
            why = diagnose(self.address, self.tls)
            if why is None:
                why = ("is the switch running, is this its P4Runtime address, and is its device id "
                       f"{self.device_id}?" + (f" (last stream error: {last})" if last else ""))
            raise P4RuntimeError("connect", "UNAVAILABLE",
                                 f"{self.address}: no arbitration answer within {timeout:g} s "
                                 f"({self.tls.describe() if self.tls else 'plaintext'}): {why}")
        if require_primary and not self._primary:
            self.close()
            raise P4RuntimeError("connect", "PERMISSION_DENIED",
                                 f"{self.address}: another controller is primary for device {self.device_id} "
                                 f"(our election id {self.election_id} is not the highest)")
        return self

    def wait_primary(self, timeout: float) -> bool:
        """After a reconnection: wait (polling) until arbitration made us primary again."""
        deadline = time.monotonic() + timeout
        while not (self._arbitrated.is_set() and self._primary):
            if time.monotonic() >= deadline or self._closed.wait(0.02):
                break
        return self._arbitrated.is_set() and self._primary

    def close(self) -> None:
        self._closed.set()
        self._end_stream()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None
        if self._channel is not None:
            self._channel.close()
        self._channel = None
        self._stub = None
        self._primary = False

    def __enter__(self) -> SwitchClient:
        if self._thread is None:
            self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _end_stream(self) -> None:
        with self._lock:
            outbox, call = self._outbox, self._call
        if outbox is not None:
            outbox.put(None)
            if call is not None:
                with contextlib.suppress(RuntimeError):  # the loop already ended
                    outbox.loop.call_soon_threadsafe(call.cancel)

    # ------------------------------------------------------------------ the stream

    def _arbitration_request(self) -> p4runtime_pb2.StreamMessageRequest:
        msg = p4runtime_pb2.StreamMessageRequest()
        msg.arbitration.device_id = self.device_id
        msg.arbitration.election_id.high = self.election_id[0]
        msg.arbitration.election_id.low = self.election_id[1]
        return msg

    def _stream_loop(self) -> None:
        asyncio.run(self._stream_main())

    async def _stream_main(self) -> None:
        delay = self.backoff[0]
        loop = asyncio.get_running_loop()
        while not self._closed.is_set():
            outbox = _Outbox(loop)
            outbox.put(self._arbitration_request())
            why = "stream ended"
            channel = open_aio_channel(self.address, self.tls)
            try:
                call = p4runtime_pb2_grpc.P4RuntimeStub(channel).StreamChannel(outbox.messages())
                with self._lock:
                    self._outbox, self._call = outbox, call
                if self._closed.is_set():  # closed while we set up: _end_stream saw nothing to cancel
                    call.cancel()
                async for resp in call:
                    delay = self.backoff[0]
                    self._on_response(resp)
            except grpc.aio.AioRpcError as exc:
                why = f"{exc.code().name}: {exc.details()}"
            except asyncio.CancelledError:
                why = "stream cancelled"
            except P4RuntimeError as exc:  # closed under us
                why = str(exc)
            except Exception as exc:  # a handler bug must not kill the stream thread silently
                log.exception("%s: stream handler failed", self.name)
                why = f"handler error: {exc}"
            finally:
                with self._lock:
                    self._outbox, self._call = None, None
                with contextlib.suppress(Exception):
                    await channel.close()
            was_up = self._arbitrated.is_set()
            self._arbitrated.clear()
            self._primary = False
            if self._closed.is_set():
                break
            if was_up:
                log.warning("%s: P4Runtime stream lost (%s); reconnecting", self.name, why)
                if self.handlers.on_disconnected:
                    self.handlers.on_disconnected(why)
            else:
                self.last_stream_error = why
                log.debug("%s: stream attempt failed (%s); retry in %.1f s", self.name, why, delay)
            if not self.reconnect:
                break
            end = time.monotonic() + delay
            while not self._closed.is_set() and time.monotonic() < end:
                await asyncio.sleep(min(0.05, delay))
            delay = min(delay * 2, self.backoff[1])

    def _on_response(self, resp: p4runtime_pb2.StreamMessageResponse) -> None:
        kind = resp.WhichOneof("update")
        if kind == "arbitration":
            arb = resp.arbitration
            primary = arb.status.code == 0
            self.primary_election_id = ((arb.election_id.high, arb.election_id.low) if arb.HasField("election_id")
                                        else None)
            changed = primary != self._primary or not self._arbitrated.is_set()
            self._primary = primary
            first = not self._arbitrated.is_set()
            self._arbitrated.set()
            if first:
                self.connect_count += 1
            if changed:
                log.info("%s: %s for device %d (primary election id %s)", self.name,
                         "primary" if primary else "backup", self.device_id, format_election_id(self.primary_election_id))
                if self.handlers.on_connected:
                    self.handlers.on_connected(primary)
        elif kind == "packet":
            self.packets_in += 1
            if self.handlers.on_packet_in and self.p4info is not None:
                self.handlers.on_packet_in(decode_packet_in(resp.packet, self.p4info))
        elif kind == "idle_timeout_notification":
            if self.handlers.on_idle_timeout and self.p4info is not None:
                note = resp.idle_timeout_notification
                entries = tuple(TableEntry.decode(e, self.p4info) for e in note.table_entry)
                self.handlers.on_idle_timeout(IdleTimeout(entries, note.timestamp))
        elif kind == "error":
            err = resp.error
            log.warning("%s: stream error %d: %s", self.name, err.canonical_code, err.message)

    def send(self, msg: p4runtime_pb2.StreamMessageRequest) -> None:
        outbox = self._outbox
        if outbox is None or not self._arbitrated.is_set():
            raise P4RuntimeError("stream", "UNAVAILABLE", f"{self.name}: the stream is not connected")
        outbox.put(msg)

    def packet_out(self, payload: bytes, **metadata: Value) -> None:
        """Send a frame out of the switch; ``metadata`` names packet_out fields (``egress_port=4``).

        Refused while backup: packet I/O belongs to the primary (P4Runtime spec; PI drops a backup's packet-outs
        without a word), so the caller learns the frame was not sent instead of believing it was."""
        if not self._primary:
            raise P4RuntimeError("packet_out", "PERMISSION_DENIED",
                                 f"{self.name}: not the primary for device {self.device_id}; a backup cannot send packets")
        if self.p4info is None:
            raise P4RuntimeError("packet_out", "FAILED_PRECONDITION", "no P4Info: push or set a pipeline first")
        msg = p4runtime_pb2.StreamMessageRequest()
        msg.packet.CopyFrom(encode_packet_out(payload, metadata, self.p4info))
        self.send(msg)
        self.packets_out += 1

    # ------------------------------------------------------------------ unary RPCs

    def _election(self) -> p4runtime_pb2.Uint128:
        return p4runtime_pb2.Uint128(high=self.election_id[0], low=self.election_id[1])

    def get_cookie(self) -> int | None:
        """The cookie of the pipeline the switch runs, or None when it has none."""
        req = p4runtime_pb2.GetForwardingPipelineConfigRequest(
            device_id=self.device_id, response_type=p4runtime_pb2.GetForwardingPipelineConfigRequest.COOKIE_ONLY)
        try:
            # wait_for_ready: after a switch restart the stream (its own channel) may be back while this
            # channel still waits out its reconnect backoff from the outage; this is called right then
            resp = self.stub.GetForwardingPipelineConfig(req, timeout=self.rpc_timeout, wait_for_ready=True)
        except grpc.RpcError as exc:
            err = decode_rpc_error("GetForwardingPipelineConfig", exc)
            if err.code in ("FAILED_PRECONDITION", "NOT_FOUND"):
                return None
            raise err from None
        if not resp.config.HasField("cookie"):
            return None
        return int(resp.config.cookie.cookie)

    def set_pipeline(self, pipeline: Pipeline, *, force: bool = False) -> bool:
        """Push the pipeline unless the switch already runs it (same cookie). Returns True when pushed."""
        self.p4info = pipeline.p4info
        if not force and self.get_cookie() == pipeline.cookie:
            log.info("%s: pipeline already installed (cookie %#x); not pushed", self.name, pipeline.cookie)
            return False
        req = p4runtime_pb2.SetForwardingPipelineConfigRequest(
            device_id=self.device_id, election_id=self._election(),
            action=p4runtime_pb2.SetForwardingPipelineConfigRequest.VERIFY_AND_COMMIT)
        req.config.p4info.CopyFrom(pipeline.p4info.message)
        req.config.p4_device_config = pipeline.device_config
        req.config.cookie.cookie = pipeline.cookie
        try:
            self.stub.SetForwardingPipelineConfig(req, timeout=max(self.rpc_timeout, 60), wait_for_ready=True)
        except grpc.RpcError as exc:
            raise decode_rpc_error("SetForwardingPipelineConfig", exc) from None
        log.info("%s: pipeline pushed (%s, cookie %#x)", self.name, pipeline.target, pipeline.cookie)
        return True

    def write(self, updates: Sequence[p4runtime_pb2.Update], *, batch: int = 1000) -> None:
        """Write updates in batches (CONTINUE_ON_ERROR, the only mode BMv2 has). A failure raises one
        :class:`P4RuntimeError` naming every failed update (index into ``updates``) after all were tried."""
        errors = []
        first: P4RuntimeError | None = None
        for start in range(0, len(updates), batch):
            chunk = list(updates[start:start + batch])
            req = p4runtime_pb2.WriteRequest(device_id=self.device_id, election_id=self._election(),
                                             atomicity=p4runtime_pb2.WriteRequest.CONTINUE_ON_ERROR)
            req.updates.extend(chunk)
            try:
                self.stub.Write(req, timeout=self.rpc_timeout)
            except grpc.RpcError as exc:
                err = decode_rpc_error("Write", exc, chunk)
                if not err.errors:
                    raise err from None  # the whole RPC failed (permission, unavailable)
                first = first or err
                for e in err.errors:
                    errors.append(type(e)(e.index + start, e.code, e.message, e.update))
        if errors:
            assert first is not None
            raise P4RuntimeError("Write", first.code, first.message, errors)

    def _entries(self, kind: str, entries: Iterable[TableEntry]) -> None:
        if self.p4info is None:
            raise P4RuntimeError("Write", "FAILED_PRECONDITION", "no P4Info: push or set a pipeline first")
        p4info = self.p4info
        self.write([e.encode_update(kind, p4info) for e in entries])  # type: ignore[arg-type]

    def insert(self, entries: Iterable[TableEntry]) -> None:
        self._entries("INSERT", entries)

    def modify(self, entries: Iterable[TableEntry]) -> None:
        self._entries("MODIFY", entries)

    def delete(self, entries: Iterable[TableEntry]) -> None:
        self._entries("DELETE", entries)

    def read(self, entities: Iterable[p4runtime_pb2.Entity]) -> Iterator[p4runtime_pb2.Entity]:
        req = p4runtime_pb2.ReadRequest(device_id=self.device_id)
        req.entities.extend(entities)
        try:
            for resp in self.stub.Read(req, timeout=self.rpc_timeout):
                yield from resp.entities
        except grpc.RpcError as exc:
            raise decode_rpc_error("Read", exc) from None

    def read_table(self, table: str | None = None, *, counters: bool = False) -> list[TableEntry]:
        """Every entry of one table (or of all tables), decoded; with ``counters`` their direct counters."""
        if self.p4info is None:
            raise P4RuntimeError("Read", "FAILED_PRECONDITION", "no P4Info: push or set a pipeline first")
        p4info = self.p4info
        if table is None:
            ents = [table_read_entity(p4info, t.name, counters=counters and t.direct_counter_id is not None)
                    for t in p4info.tables if not t.const]
        else:
            t = p4info.table(table)
            ents = [table_read_entity(p4info, t.name, counters=counters and t.direct_counter_id is not None)]
        return [TableEntry.decode(e.table_entry, p4info) for e in self.read(ents) if e.HasField("table_entry")]

    def packet_out_metadata(self) -> Mapping[str, int]:
        if self.p4info is None:
            return {}
        return {f.name: f.bitwidth for f in self.p4info.packet_metadata("packet_out")}


def format_election_id(eid: ElectionId | None) -> str:
    """As users give it: the low word alone when the high word is zero (``--election-id 20``), else high:low."""
    if eid is None:
        return "none"
    return str(eid[1]) if eid[0] == 0 else f"{eid[0]}:{eid[1]}"
