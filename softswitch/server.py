"""softswitch's P4Runtime server: the device (`SoftSwitch`) and its gRPC service.

`SoftSwitch` holds everything of one device: the pipeline (P4Info, device config, cookie, the program and its
dataplane), the controller-side state the dataplane does not keep (controller_metadata, metadata, idle timers),
arbitration, and the ports. The gRPC servicer only decodes requests, asks the switch, and encodes answers and
errors the way p4lang/PI does (the server behind BMv2's simple_switch_grpc), so that clients written against
BMv2 (p4runtime-shell, PTF, our controller) see the same answers - except where softswitch follows the
specification more closely: RESOURCE_EXHAUSTED for a full table, a real VERIFY of the device config, canonical
byte strings, PERMISSION_DENIED for const tables, idle timeouts with a 50 ms timer instead of 1 s.

Threads: the gRPC event loop (streams and request decoding; see P4RuntimeService), a small worker pool for the
calls into the switch, one reader thread per port, and the idle-timeout scanner. One lock (`SoftSwitch._lock`)
serialises the dataplane: packet processing, writes and reads take it in turn.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import heapq
import importlib.metadata
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent import futures
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NoReturn, Protocol

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, status_pb2
from p4.v1 import p4runtime_pb2, p4runtime_pb2_grpc

from softswitch.arbitration import ArbitrationError, Arbitrator, Connection, ElectionId
from softswitch.dataplane import (
    Dataplane,
    DataplaneError,
    EntryExists,
    EntryNotFound,
    FieldMatch,
    InvalidEntry,
    TableFull,
)
from softswitch.frontend import P4FrontendError, load_program
from softswitch.p4runtime.codec import (
    ENTITY_TABLE_ENTRY,
    READ_RESPONSE_ENTITY,
    Codec,
    EntryKey,
    counter_data_field,
    entry_key,
    ld,
    since_last_hit_field,
    varint,
)
from softswitch.p4runtime.schema import (
    P4RuntimeError,
    Schema,
    TableInfo,
    decode_uint,
    encode_uint,
    essential_differences,
    invalid,
    pack_header,
    unpack_header,
)

log = logging.getLogger("softswitch.server")
TRACE = 5

Update = p4runtime_pb2.Update
SetConfig = p4runtime_pb2.SetForwardingPipelineConfigRequest
GetConfig = p4runtime_pb2.GetForwardingPipelineConfigRequest

GRPC_CODES: dict[int, grpc.StatusCode] = {sc.value[0]: sc for sc in grpc.StatusCode}
READ_CHUNK = 1000  # entities per ReadResponse: a full 64k-entry table must not exceed a client's 4 MB message limit
PACKET_IN_QUEUE = 4096  # packet-ins waiting for a slow client before they are dropped
DETAILS_BUDGET = 8 << 10  # bytes of per-update statuses in one trailer: gRPC clients' default soft metadata limit
INLINE_UPDATES = 16  # Writes with at most this many updates run on the event loop when the switch is idle
DEFAULT_WORKERS = 16  # threads for calls into the switch; they serialise on its lock, so more would only wait
DEFAULT_MAX_STREAMS = 4096  # open StreamChannels (arbitrated or not) before new ones are refused
DEVICE_CONFIG_HINT = "send the P4 source (flowtable.p4 from `offloadgen build`) as p4_device_config"


def api_version() -> str:
    try:
        return importlib.metadata.version("p4runtime")
    except importlib.metadata.PackageNotFoundError:
        return "1.4.1"


class PortSink(Protocol):
    def send(self, frame: bytes) -> None: ...


@dataclass(slots=True)
class EntryMeta:
    """What P4Runtime keeps per entry that the dataplane does not: cookies and the idle timer."""

    match: dict[int, FieldMatch]
    controller_metadata: int
    metadata: bytes
    idle_timeout_ns: int
    added_ns: int  # time.monotonic_ns of the INSERT (time_since_last_hit of a never-hit entry counts from it)
    timer_ns: int  # start of the current idle period: INSERT, MODIFY or the last notification
    gen: int = 0  # bumped on MODIFY so that stale idle-heap items are skipped
    encoded: bytes = b""  # the entry as a read returns it, without counters (Codec.encode_entry), once made


@dataclass
class Pipeline:
    config: p4runtime_pb2.ForwardingPipelineConfig
    schema: Schema
    codec: Codec
    program: Any
    dataplane: Dataplane
    meta: dict[EntryKey, EntryMeta] = field(default_factory=dict)
    defaults: dict[int, tuple[int, bytes]] = field(default_factory=dict)  # table id -> cookies of a set default
    idle_heap: list[tuple[int, int, EntryKey]] = field(default_factory=list)  # (deadline ns, gen, key)


def _looks_like_bmv2_json(data: bytes) -> bool:
    head = data[:4096].lstrip()
    return head.startswith(b"{") and (b'"header_types"' in data[:65536] or b'"__meta__"' in head)


class SoftSwitch:
    """One P4Runtime device: pipeline, dataplane, arbitration and ports."""

    def __init__(self, device_id: int = 1, cpu_port: int | None = 255, *, drop_port: int = 511,
                 strict_bytestrings: bool = False, idle_scan_interval: float = 0.05) -> None:
        self.device_id = device_id
        self.cpu_port = cpu_port
        self.drop_port = drop_port
        self.strict_bytestrings = strict_bytestrings
        self.idle_scan_interval = idle_scan_interval
        self.arbitration = Arbitrator(device_id)
        self.pipeline: Pipeline | None = None
        self.ports: dict[int, PortSink] = {}
        self.packet_ins = 0
        self.packet_ins_dropped = 0
        self.dump_bytes = 0  # --dump-packet-data: log this many bytes of each packet in and out
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._idle_thread: threading.Thread | None = None

    # ---- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> None:
        self._stop.clear()
        self._idle_thread = threading.Thread(target=self._idle_loop, name="idle-timeout", daemon=True)
        self._idle_thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._idle_thread is not None:
            self._idle_thread.join(timeout=2)

    def add_port(self, number: int, sink: PortSink) -> None:
        if number == self.cpu_port:
            raise ValueError(f"port {number} is the CPU port; attach interfaces to other port numbers")
        self.ports[number] = sink

    # ---- pipeline -----------------------------------------------------------------------------------------
    def build_pipeline(self, config: p4runtime_pb2.ForwardingPipelineConfig) -> Pipeline:
        """Verify a ForwardingPipelineConfig and make its dataplane (nothing live changes)."""
        data = config.p4_device_config
        if not data:
            raise invalid(f"config.p4_device_config is empty; {DEVICE_CONFIG_HINT}")
        if _looks_like_bmv2_json(data):
            raise invalid(f"p4_device_config is a BMv2 JSON (p4c-bm2-ss output); softswitch runs the P4 program "
                          f"itself: {DEVICE_CONFIG_HINT}")
        try:
            source = data.decode("utf-8")
        except UnicodeDecodeError:
            raise invalid(f"p4_device_config is not UTF-8 text; {DEVICE_CONFIG_HINT}") from None
        try:
            program = load_program(source, "flowtable.p4")
        except P4FrontendError as exc:
            raise invalid(f"p4_device_config: {exc}") from None
        if not config.HasField("p4info") or not (config.p4info.tables or config.p4info.actions):
            raise invalid("config.p4info is empty; send the P4Info of the program (p4info.txtpb from `offloadgen "
                          "build`)")
        diffs = essential_differences(config.p4info, program.p4info)
        if diffs:
            more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
            raise invalid("the P4Info does not describe the P4 program sent with it: " + "; ".join(diffs[:3]) + more)
        return self._make_pipeline(config, program)

    def _make_pipeline(self, config: p4runtime_pb2.ForwardingPipelineConfig, program: Any) -> Pipeline:
        schema = Schema.from_p4info(config.p4info)
        dp = Dataplane(program, self.cpu_port if self.cpu_port is not None else 0)
        stored = p4runtime_pb2.ForwardingPipelineConfig()
        stored.CopyFrom(config)
        return Pipeline(stored, schema, Codec(schema, self.strict_bytestrings), program, dp)

    def load_source(self, source: str, filename: str) -> None:
        """The program given on the command line: its P4Info comes from the front end, without a cookie."""
        try:
            program = load_program(source, filename)
        except P4FrontendError as exc:
            raise P4RuntimeError(code_pb2.INVALID_ARGUMENT, str(exc)) from None
        config = p4runtime_pb2.ForwardingPipelineConfig(p4_device_config=source.encode())
        config.p4info.CopyFrom(program.p4info)
        with self._lock:
            self.pipeline = self._make_pipeline(config, program)

    def set_pipeline(self, action: int, config: p4runtime_pb2.ForwardingPipelineConfig, has_config: bool) -> None:
        if action == SetConfig.UNSPECIFIED:
            raise invalid("SetForwardingPipelineConfig: action is not set; use VERIFY, VERIFY_AND_COMMIT or "
                          "RECONCILE_AND_COMMIT")
        if action in (SetConfig.VERIFY_AND_SAVE, SetConfig.COMMIT):
            raise P4RuntimeError(code_pb2.UNIMPLEMENTED, f"{SetConfig.Action.Name(action)} is not supported by "
                                 "softswitch; use VERIFY_AND_COMMIT (or RECONCILE_AND_COMMIT to keep the entries)")
        if action not in (SetConfig.VERIFY, SetConfig.VERIFY_AND_COMMIT, SetConfig.RECONCILE_AND_COMMIT):
            raise invalid(f"unknown SetForwardingPipelineConfig action {action}")
        if not has_config:
            raise invalid(f"config is not set; {DEVICE_CONFIG_HINT}, with its P4Info")
        new = self.build_pipeline(config)
        if action == SetConfig.VERIFY:
            log.info("pipeline config verified")
            return
        with self._lock:
            if action == SetConfig.RECONCILE_AND_COMMIT and self.pipeline is not None:
                self._carry_state(self.pipeline, new)
            self.pipeline = new
        log.info("pipeline committed (%s, %d tables, cookie %s)", SetConfig.Action.Name(action),
                 len(new.schema.tables), new.config.cookie.cookie if new.config.HasField("cookie") else "unset")

    def _carry_state(self, old: Pipeline, new: Pipeline) -> None:
        """RECONCILE_AND_COMMIT: move entries, default actions and counters to the new pipeline, or refuse."""
        now = time.monotonic_ns()
        for table in old.schema.tables.values():
            if table.is_const:
                continue
            for e in old.dataplane.entries(table.id):
                meta = old.meta.get(entry_key(table.id, e.match, e.priority))
                te = old.codec.entry_to_proto(table, e)
                te.idle_timeout_ns = meta.idle_timeout_ns if meta else 0
                where = f"cannot keep the entries: an entry of {table.name}"
                new_table = new.schema.tables.get(table.id)
                if new_table is None:
                    raise invalid(f"{where}: the new P4Info has no table {table.id}; use VERIFY_AND_COMMIT")
                try:
                    ne = new.codec.entry(te, new_table)
                except P4RuntimeError as exc:
                    raise invalid(f"{where} does not fit the new program ({exc.message}); use VERIFY_AND_COMMIT") from None
                ne.packets, ne.bytes, ne.last_hit_ns = e.packets, e.bytes, e.last_hit_ns
                self._dp_call(new_table, partial(new.dataplane.insert, ne))
                key = entry_key(table.id, ne.match, ne.priority)
                m = EntryMeta(ne.match, meta.controller_metadata if meta else 0, meta.metadata if meta else b"",
                              ne.idle_timeout_ns, meta.added_ns if meta else now, meta.timer_ns if meta else now)
                new.meta[key] = m
                if m.idle_timeout_ns:
                    heapq.heappush(new.idle_heap, (m.timer_ns + m.idle_timeout_ns, m.gen, key))
        for table_id, cookies in old.defaults.items():
            nt = new.schema.tables.get(table_id)
            if nt is None:
                continue
            action_id, params = old.dataplane.get_default(table_id)
            te = p4runtime_pb2.TableEntry(table_id=table_id, is_default_action=True)
            te.action.CopyFrom(old.codec.action_to_proto(action_id, params))
            try:
                aid, p = new.codec.action(te, nt)
            except P4RuntimeError as exc:
                raise invalid(f"cannot keep the default action of {nt.name}: {exc.message}") from None
            new.dataplane.set_default(table_id, aid, p)
            new.defaults[table_id] = cookies
        for cid, c in old.schema.counters.items():
            nc = new.schema.counters.get(cid)
            if nc is not None and nc.size == c.size:
                for i in range(c.size):
                    packets, bytes_ = old.dataplane.counter_read(cid, i)
                    new.dataplane.counter_write(cid, i, packets, bytes_)

    def get_pipeline(self, response_type: int) -> p4runtime_pb2.ForwardingPipelineConfig:
        p = self._require_pipeline()
        out = p4runtime_pb2.ForwardingPipelineConfig()
        if response_type in (GetConfig.ALL, GetConfig.P4INFO_AND_COOKIE):
            out.p4info.CopyFrom(p.config.p4info)
        if response_type in (GetConfig.ALL, GetConfig.DEVICE_CONFIG_AND_COOKIE):
            out.p4_device_config = p.config.p4_device_config
        if response_type not in (GetConfig.ALL, GetConfig.COOKIE_ONLY, GetConfig.P4INFO_AND_COOKIE,
                                 GetConfig.DEVICE_CONFIG_AND_COOKIE):
            raise invalid(f"unknown response_type {response_type}")
        if p.config.HasField("cookie"):
            out.cookie.CopyFrom(p.config.cookie)
        return out

    def _require_pipeline(self) -> Pipeline:
        p = self.pipeline
        if p is None:
            raise P4RuntimeError(code_pb2.FAILED_PRECONDITION, "No forwarding pipeline config set for this device; "
                                 "push one with SetForwardingPipelineConfig")
        return p

    # ---- access checks ------------------------------------------------------------------------------------
    def check_writer(self, device_id: int, role: str, election_id: ElectionId | None) -> None:
        """The RPC-wide checks of Write / SetForwardingPipelineConfig, in the specification's order."""
        self._check_device(device_id)
        if role:
            raise P4RuntimeError(code_pb2.NOT_FOUND, f"unknown role {role!r}; softswitch has only the default role")
        if not self.arbitration.may_write(election_id):
            raise P4RuntimeError(code_pb2.PERMISSION_DENIED,
                                 f"Not primary: election id {election_id} is not the primary's; open a StreamChannel "
                                 "and win arbitration with a higher election id")

    def check_reader(self, device_id: int) -> Pipeline:
        self._check_device(device_id)
        return self._require_pipeline()

    def _check_device(self, device_id: int) -> None:
        # The specification's answer; PI (BMv2) instead says PERMISSION_DENIED to writes (no primary there) and
        # FAILED_PRECONDITION to reads (no pipeline there), which hides a misconfigured device id behind
        # arbitration or pipeline errors.
        if device_id != self.device_id:
            raise P4RuntimeError(code_pb2.NOT_FOUND, f"unknown device id {device_id}; this switch is device "
                                 f"{self.device_id} (--device-id)")

    def call_if_free(self, fn: Callable[[], Any]) -> tuple[bool, Any]:
        """(True, fn()) with the switch lock taken, if it is free at once; (False, None) without calling fn."""
        if not self._lock.acquire(blocking=False):
            return False, None
        try:
            return True, fn()
        finally:
            self._lock.release()

    # ---- Write --------------------------------------------------------------------------------------------
    def write(self, request: p4runtime_pb2.WriteRequest) -> list[p4runtime_pb2.Error] | None:
        """Apply a batch update by update; per-update errors (None when every update succeeded)."""
        if request.atomicity != p4runtime_pb2.WriteRequest.CONTINUE_ON_ERROR:
            raise P4RuntimeError(code_pb2.UNIMPLEMENTED, "only CONTINUE_ON_ERROR batches are supported (as in BMv2)")
        errors: list[p4runtime_pb2.Error] = []
        failed = False
        with self._lock:
            p = self._require_pipeline()
            for i, update in enumerate(request.updates):
                err = p4runtime_pb2.Error(canonical_code=code_pb2.OK)
                try:
                    self._write_update(p, update)
                except P4RuntimeError as exc:
                    failed = True
                    err.canonical_code = exc.code
                    err.message = exc.message
                    err.space = "softswitch"
                    log.info("write update %d: %s", i, exc)
                errors.append(err)
        return errors if failed else None

    def _write_update(self, p: Pipeline, update: p4runtime_pb2.Update) -> None:
        if update.type not in (Update.INSERT, Update.MODIFY, Update.DELETE):
            raise invalid("update type is not set; use INSERT, MODIFY or DELETE")
        kind = update.entity.WhichOneof("entity")
        if kind == "table_entry":
            self._write_table_entry(p, update.type, update.entity.table_entry)
        elif kind == "counter_entry":
            self._write_counter(p, update.type, update.entity.counter_entry)
        elif kind == "direct_counter_entry":
            self._write_direct_counter(p, update.type, update.entity.direct_counter_entry)
        elif kind is None:
            raise invalid("update without an entity")
        else:
            raise P4RuntimeError(code_pb2.UNIMPLEMENTED, f"{kind} writes are not supported by softswitch")

    @staticmethod
    def _dp_call(table: TableInfo, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except EntryExists:
            raise P4RuntimeError(code_pb2.ALREADY_EXISTS,
                                 f"{table.name}: match entry exists, use MODIFY if you wish to change action") from None
        except EntryNotFound:
            raise P4RuntimeError(code_pb2.NOT_FOUND, f"{table.name}: cannot find match entry") from None
        except TableFull:
            raise P4RuntimeError(code_pb2.RESOURCE_EXHAUSTED,
                                 f"{table.name} is full ({table.size} entries); delete entries first") from None
        except InvalidEntry as exc:
            raise invalid(f"{table.name}: {exc}") from None
        except DataplaneError as exc:
            raise P4RuntimeError(code_pb2.INTERNAL, f"{table.name}: {exc}") from None

    def _write_table_entry(self, p: Pipeline, op: int, te: p4runtime_pb2.TableEntry) -> None:
        table = p.schema.table(te.table_id)
        dp = p.dataplane
        if te.HasField("time_since_last_hit"):
            raise invalid(f"{table.name}: time_since_last_hit must not be set in a WriteRequest")
        if te.is_default_action:
            if op != Update.MODIFY:
                raise invalid(f"{table.name}: cannot {Update.Type.Name(op)} the default entry; use MODIFY")
            if te.match or te.priority:
                raise invalid(f"{table.name}: the default entry has no match and priority 0")
            if te.idle_timeout_ns:
                raise invalid(f"{table.name}: the default entry cannot have an idle timeout")
            if table.const_default_action_id:
                raise P4RuntimeError(code_pb2.PERMISSION_DENIED,
                                     f"{table.name} has a const default action, which cannot be changed")
            if te.HasField("counter_data"):
                raise P4RuntimeError(code_pb2.UNIMPLEMENTED, f"{table.name}: softswitch does not count default-entry "
                                     "hits; leave counter_data unset")
            if te.HasField("action"):
                action_id, params = p.codec.action(te, table)
                self._dp_call(table, lambda: dp.set_default(table.id, action_id, params))
                p.defaults[table.id] = (te.controller_metadata, te.metadata)
            else:
                self._dp_call(table, lambda: dp.reset_default(table.id))
                p.defaults.pop(table.id, None)
            return
        if table.is_const:
            raise P4RuntimeError(code_pb2.PERMISSION_DENIED,
                                 f"{table.name} is a const table: its entries come from the P4 program")
        now = time.monotonic_ns()
        if op == Update.DELETE:
            match, priority = p.codec.match(te, table)
            self._dp_call(table, lambda: dp.delete(table.id, match, priority))
            p.meta.pop(entry_key(table.id, match, priority), None)
            return
        e, encoded = p.codec.entry_encoded(te, table)
        key = entry_key(table.id, e.match, e.priority)
        if op == Update.INSERT:
            self._dp_call(table, lambda: dp.insert(e, adopt=True))
            meta = EntryMeta(e.match, te.controller_metadata, te.metadata, te.idle_timeout_ns, now, now,
                             encoded=encoded)
            p.meta[key] = meta
        else:
            # dp.modify keeps the entry object, so its counters and last hit stay unless counter_data is set;
            # the codec has validated the action, so the only refusal left is NOT_FOUND.
            self._dp_call(table, lambda: dp.modify(e))
            if te.HasField("counter_data"):
                self._dp_call(table, lambda: dp.direct_counter_write(table.id, e.match, e.priority, e.packets, e.bytes))
            prev = p.meta.get(key)
            meta = EntryMeta(e.match, te.controller_metadata, te.metadata, te.idle_timeout_ns,
                             prev.added_ns if prev else now, now, (prev.gen + 1) if prev else 0, encoded)
            p.meta[key] = meta
        if meta.idle_timeout_ns:
            heapq.heappush(p.idle_heap, (now + meta.idle_timeout_ns, meta.gen, key))

    def _write_counter(self, p: Pipeline, op: int, ce: p4runtime_pb2.CounterEntry) -> None:
        counter = p.schema.counter(ce.counter_id)
        if op != Update.MODIFY:
            raise invalid(f"counter {counter.name}: only MODIFY applies to counters")
        if not ce.HasField("index"):
            raise P4RuntimeError(code_pb2.UNIMPLEMENTED, f"counter {counter.name}: wildcard writes are not supported; "
                                 "set index")
        idx = ce.index.index
        if idx < 0:
            raise invalid(f"counter {counter.name}: negative index {idx}")
        if idx >= counter.size:
            raise P4RuntimeError(code_pb2.OUT_OF_RANGE, f"counter {counter.name}: index {idx} >= size {counter.size}")
        p.dataplane.counter_write(counter.id, idx, ce.data.packet_count, ce.data.byte_count)

    def _write_direct_counter(self, p: Pipeline, op: int, dce: p4runtime_pb2.DirectCounterEntry) -> None:
        if not dce.HasField("table_entry"):
            raise invalid("DirectCounterEntry without table_entry")
        te = dce.table_entry
        table = p.schema.table(te.table_id)
        if not table.direct_counter_id:
            raise invalid(f"{table.name} has no direct counter")
        if op != Update.MODIFY:
            raise invalid(f"{table.name}: only MODIFY applies to direct counters")
        if te.is_default_action:
            raise P4RuntimeError(code_pb2.UNIMPLEMENTED, f"{table.name}: softswitch does not count default-entry hits")
        match, priority = p.codec.match(te, table)
        self._dp_call(table, lambda: p.dataplane.direct_counter_write(table.id, match, priority,
                                                                       dce.data.packet_count, dce.data.byte_count))

    # ---- Read ---------------------------------------------------------------------------------------------
    def read(self, request: p4runtime_pb2.ReadRequest) -> Iterator[p4runtime_pb2.ReadResponse]:
        """The ReadResponses of a request (see read_bytes, which the gRPC service sends as they are)."""
        for chunk in self.read_bytes(request):
            yield p4runtime_pb2.ReadResponse.FromString(chunk)

    def read_bytes(self, request: p4runtime_pb2.ReadRequest) -> list[bytes]:
        """The serialized ReadResponses of a request, READ_CHUNK entities each.

        Built as bytes: each table entry's encoding is kept from the first read (EntryMeta.encoded) and a read
        appends only the counter field, so a whole-table read is mostly a concatenation instead of a protobuf
        object per entry, match field and parameter.
        """
        p = self.check_reader(request.device_id)
        entities: list[bytes] = []  # serialized Entity messages
        for entity in request.entities:
            kind = entity.WhichOneof("entity")
            if kind == "table_entry":
                entities += self._read_tables(p, entity.table_entry)
            elif kind == "counter_entry":
                entities += (e.SerializeToString() for e in self._read_counters(p, entity.counter_entry))
            elif kind == "direct_counter_entry":
                entities += (e.SerializeToString()
                             for e in self._read_direct_counters(p, entity.direct_counter_entry))
            elif kind is None:
                raise invalid("read of an entity that is not set")
            else:
                raise P4RuntimeError(code_pb2.UNIMPLEMENTED, f"{kind} reads are not supported by softswitch")
        return [b"".join([ld(READ_RESPONSE_ENTITY, x) for x in entities[i:i + READ_CHUNK]])
                for i in range(0, max(len(entities), 1), READ_CHUNK)]

    def _read_tables(self, p: Pipeline, req: p4runtime_pb2.TableEntry) -> list[bytes]:
        """Serialized Entity messages of the table entries `req` selects."""
        want_counters = req.HasField("counter_data")
        want_hit = req.HasField("time_since_last_hit")
        if req.table_id:
            tables = [p.schema.table(req.table_id)]
            if want_hit and not tables[0].supports_idle_timeout and not req.is_default_action:
                raise invalid(f"{tables[0].name} does not support idle timeout; do not set time_since_last_hit")
        else:
            if req.match:
                raise invalid("a match needs a table id")
            tables = list(p.schema.tables.values())
        action_filter = req.action.action.action_id if req.HasField("action") else 0
        out: list[bytes] = []
        codec = p.codec
        for table in tables:
            if req.is_default_action:
                if want_hit:
                    raise invalid(f"{table.name}: default entries have no idle timeout; do not set "
                                  "time_since_last_hit")
                with self._lock:
                    action_id, params = p.dataplane.get_default(table.id)
                    cookies = p.defaults.get(table.id, (0, b""))
                if action_filter and action_id != action_filter:
                    continue
                te = p4runtime_pb2.TableEntry(table_id=table.id, is_default_action=True,
                                              controller_metadata=cookies[0], metadata=cookies[1])
                te.action.CopyFrom(codec.action_to_proto(action_id, params))
                out.append(ld(ENTITY_TABLE_ENTRY, te.SerializeToString()))
                continue
            counters = want_counters and bool(table.direct_counter_id)
            hit = want_hit and table.supports_idle_timeout
            filtered = bool(action_filter or req.priority or req.controller_metadata or req.metadata)
            with self._lock:
                # Under the switch lock: no write changes an entry or its meta while it is encoded.
                now = time.monotonic_ns()
                if req.match:
                    match, priority = codec.match(req, table)
                    one = p.dataplane.get(table.id, match, priority)
                    entries = [one] if one is not None else []
                    const = table.is_const
                elif table.is_const:
                    entries = p.dataplane.const_entries(table.id)
                    const = True
                else:
                    entries = p.dataplane.live_entries(table.id)
                    const = False
                meta = p.meta
                for e in entries:
                    em = meta.get(entry_key(table.id, e.match, e.priority))
                    if filtered:
                        if action_filter and e.action_id != action_filter:
                            continue
                        if req.priority and e.priority != req.priority:
                            continue
                        if req.controller_metadata and (em is None or em.controller_metadata != req.controller_metadata):
                            continue
                        if req.metadata and (em is None or em.metadata != req.metadata):
                            continue
                    if em is None:
                        data = codec.encode_entry(table, e, is_const=const)
                    else:
                        data = em.encoded
                        if not data:
                            data = em.encoded = codec.encode_entry(table, e, em.controller_metadata, em.metadata,
                                                                   em.idle_timeout_ns)
                    if counters:
                        data += counter_data_field(e.packets, e.bytes)
                    if hit:
                        since = e.last_hit_ns or (em.added_ns if em else now)
                        data += since_last_hit_field(max(0, now - since))
                    out.append(ld(ENTITY_TABLE_ENTRY, data))
        return out

    def _read_counters(self, p: Pipeline, req: p4runtime_pb2.CounterEntry) -> list[p4runtime_pb2.Entity]:
        counters = [p.schema.counter(req.counter_id)] if req.counter_id else list(p.schema.counters.values())
        out = []
        with self._lock:
            for c in counters:
                if req.HasField("index"):
                    if req.index.index < 0:
                        raise invalid(f"counter {c.name}: negative index {req.index.index}")
                    if req.index.index >= c.size:
                        raise P4RuntimeError(code_pb2.OUT_OF_RANGE,
                                             f"counter {c.name}: index {req.index.index} >= size {c.size}")
                    indices: range | list[int] = [req.index.index]
                else:
                    indices = range(c.size)
                for i in indices:
                    packets, bytes_ = p.dataplane.counter_read(c.id, i)
                    ce = p4runtime_pb2.CounterEntry(counter_id=c.id)
                    ce.index.index = i
                    _set_counter_data(ce.data, c.unit, packets, bytes_)
                    out.append(p4runtime_pb2.Entity(counter_entry=ce))
        return out

    def _read_direct_counters(self, p: Pipeline, req: p4runtime_pb2.DirectCounterEntry) -> list[p4runtime_pb2.Entity]:
        if not req.HasField("table_entry") or not req.table_entry.table_id:
            raise P4RuntimeError(code_pb2.UNIMPLEMENTED, "reading the direct counters of all tables is not supported; "
                                 "set table_entry.table_id")
        te = req.table_entry
        table = p.schema.table(te.table_id)
        if not table.direct_counter_id:
            raise invalid(f"{table.name} has no direct counter")
        if te.is_default_action:
            raise P4RuntimeError(code_pb2.UNIMPLEMENTED, f"{table.name}: softswitch does not count default-entry hits")
        unit = p.schema.p4info.direct_counters[0].spec.unit if p.schema.p4info.direct_counters else 3
        for dc in p.schema.p4info.direct_counters:
            if dc.preamble.id == table.direct_counter_id:
                unit = dc.spec.unit
        with self._lock:
            if te.match:
                match, priority = p.codec.match(te, table)
                one = p.dataplane.get(table.id, match, priority)
                if one is None:
                    raise P4RuntimeError(code_pb2.NOT_FOUND, f"{table.name}: cannot find match entry")
                entries = [one]
            else:
                entries = p.dataplane.entries(table.id)
        out = []
        for e in entries:
            dce = p4runtime_pb2.DirectCounterEntry()
            dce.table_entry.table_id = table.id
            dce.table_entry.priority = e.priority
            dce.table_entry.match.extend(p.codec.match_to_proto(table, e.match))
            _set_counter_data(dce.data, unit, e.packets, e.bytes)
            out.append(p4runtime_pb2.Entity(direct_counter_entry=dce))
        return out

    # ---- packets ------------------------------------------------------------------------------------------
    def receive(self, port: int, frame: bytes) -> None:
        """A frame arrived on `port` (called by the port reader threads)."""
        with self._lock:
            p = self.pipeline
            if p is None:
                return
            try:
                outputs = p.dataplane.process(port, frame)
            except DataplaneError as exc:
                log.debug("port %d: %d-byte frame dropped: %s", port, len(frame), exc)
                return
        if self.dump_bytes:
            log.info("port %d in (%d bytes): %s", port, len(frame), frame[:self.dump_bytes].hex())
            for egress, data in outputs:
                log.info("port %d out (%d bytes): %s", egress, len(data), data[:self.dump_bytes].hex())
        elif log.isEnabledFor(TRACE):
            log.log(TRACE, "port %d: %d bytes in -> %s", port, len(frame), [(e, len(f)) for e, f in outputs])
        self._emit(p, outputs)

    def _emit(self, p: Pipeline, outputs: list[tuple[int, bytes]]) -> None:
        for egress, data in outputs:
            if egress == self.drop_port:
                continue
            if self.cpu_port is not None and egress == self.cpu_port:
                self._packet_in(p, data)
                continue
            sink = self.ports.get(egress)
            if sink is None:
                log.debug("egress port %d has no interface; %d-byte frame dropped", egress, len(data))
                continue
            sink.send(data)

    def _packet_in(self, p: Pipeline, data: bytes) -> None:
        """Send a frame to the primary as a PacketIn, serialized here without protobuf objects (a packet-in
        built a message and one object per metadata field; the bytes are what protobuf would serialize)."""
        hdr = p.schema.packet_in
        metadata = b""
        if hdr is not None:
            if len(data) < hdr.nbytes:
                log.warning("a %d-byte frame to the CPU port is shorter than the packet_in header; dropped", len(data))
                return
            metadata = b"".join([ld(_PACKET_IN_METADATA, _VARINT_1 + varint(fid) + ld(_META_VALUE, encode_uint(value)))
                                 for fid, value in unpack_header(hdr, data).items()])
            data = data[hdr.nbytes:]
        msg = ld(_STREAM_PACKET, (ld(_PACKET_IN_PAYLOAD, data) if data else b"") + metadata)
        if self.arbitration.send_to_primary(msg):
            self.packet_ins += 1
        else:
            self.packet_ins_dropped += 1

    def packet_out(self, packet: p4runtime_pb2.PacketOut) -> p4runtime_pb2.StreamError | None:
        """Inject a primary's PacketOut as from the CPU port; a StreamError for the sender when it is refused."""
        try:
            p = self._require_pipeline()
            if self.cpu_port is None:
                raise P4RuntimeError(code_pb2.FAILED_PRECONDITION, "packet-out needs the switch started with --cpu-port")
            hdr = p.schema.packet_out
            values: dict[int, int] = {}
            if hdr is not None:
                fields = {f.id: f for f in hdr.fields}
                for md in packet.metadata:
                    f = fields.get(md.metadata_id)
                    if f is None:
                        raise invalid(f"PacketOut: unknown metadata id {md.metadata_id}; packet_out has "
                                      f"{', '.join(f'{x.name} ({x.id})' for x in hdr.fields)}")
                    values[f.id] = decode_uint(md.value, f.bitwidth, f"PacketOut metadata {f.name}",
                                               self.strict_bytestrings)
                data = pack_header(hdr, values) + packet.payload
            elif packet.metadata:
                raise invalid("PacketOut has metadata but the program has no @controller_header(\"packet_out\")")
            else:
                data = packet.payload
        except P4RuntimeError as exc:
            err = p4runtime_pb2.StreamError(canonical_code=exc.code, message=exc.message, space="softswitch")
            err.packet_out.packet_out.CopyFrom(packet)
            return err
        self.receive(self.cpu_port, data)
        return None

    # ---- idle timeouts ------------------------------------------------------------------------------------
    def _idle_loop(self) -> None:
        while not self._stop.wait(self.idle_scan_interval):
            try:
                self.idle_scan()
            except Exception:
                log.exception("idle-timeout scan failed")

    def idle_scan(self) -> int:
        """Notify the primary of entries idle for at least their TTL; returns how many were notified.

        After a notification the entry's timer restarts (specification): it is notified again after another TTL
        without hits, for as long as it stays idle (BMv2 re-notifies about every 2 s instead).
        """
        per_table: dict[int, p4runtime_pb2.IdleTimeoutNotification] = {}
        with self._lock:
            p = self.pipeline
            if p is None or not p.idle_heap:
                return 0
            now = time.monotonic_ns()
            heap = p.idle_heap
            while heap and heap[0][0] <= now:
                _, gen, key = heapq.heappop(heap)
                meta = p.meta.get(key)
                if meta is None or meta.gen != gen or not meta.idle_timeout_ns:
                    continue
                e = p.dataplane.get(key[0], meta.match, key[2])
                if e is None:
                    continue
                base = max(meta.timer_ns, e.last_hit_ns)
                if now - base >= meta.idle_timeout_ns:
                    table = p.schema.tables[key[0]]
                    n = per_table.setdefault(table.id, p4runtime_pb2.IdleTimeoutNotification())
                    te = n.table_entry.add(table_id=table.id, priority=key[2],
                                           controller_metadata=meta.controller_metadata, metadata=meta.metadata,
                                           idle_timeout_ns=meta.idle_timeout_ns)
                    te.match.extend(p.codec.match_to_proto(table, meta.match))
                    meta.timer_ns = now
                    base = now
                heapq.heappush(heap, (base + meta.idle_timeout_ns, gen, key))
        count = 0
        for n in per_table.values():
            n.timestamp = time.time_ns()
            count += len(n.table_entry)
            self.arbitration.send_to_primary(p4runtime_pb2.StreamMessageResponse(idle_timeout_notification=n))
        if count:
            log.debug("idle timeout: %d entr%s notified", count, "y" if count == 1 else "ies")
        return count


def _set_counter_data(data: p4runtime_pb2.CounterData, unit: int, packets: int, bytes_: int) -> None:
    # p4info CounterSpec.Unit: 1 BYTES, 2 PACKETS, 3 BOTH
    if unit in (2, 3, 0):
        data.packet_count = packets
    if unit in (1, 3, 0):
        data.byte_count = bytes_


# ---- gRPC ---------------------------------------------------------------------------------------------------
_END = object()
# Tags of a PacketIn written as bytes: StreamMessageResponse.packet, PacketIn.payload / .metadata,
# PacketMetadata.metadata_id / .value.
_STREAM_PACKET, _PACKET_IN_PAYLOAD, _PACKET_IN_METADATA = b"\x12", b"\x0a", b"\x12"
_VARINT_1, _META_VALUE = b"\x08", b"\x12"


def _serialize_stream(msg: p4runtime_pb2.StreamMessageResponse | bytes) -> bytes:
    return msg if isinstance(msg, bytes) else msg.SerializeToString()


class _Abort:
    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.message = message


def _check_decoded(request: Any) -> None:
    if isinstance(request, Undecodable):
        raise request.error()


def _grpc_code(code: int) -> grpc.StatusCode:
    return GRPC_CODES.get(code, grpc.StatusCode.UNKNOWN)


class P4RuntimeService(p4runtime_pb2_grpc.P4RuntimeServicer):
    """The gRPC face of a SoftSwitch, on grpc.aio.

    Why asyncio: grpc's sync server runs every RPC on a worker thread until it ends, so each open StreamChannel
    pins a worker for its whole life, and idle or hostile streams starve Write/Read of workers (63 idle streams
    stalled every unary RPC of a 64-worker server). Here a stream is a coroutine that costs no thread while it
    waits; only the work that touches the switch (which takes its lock and may wait for a long batch) runs on
    `pool`, so the event loop itself never blocks and unary RPCs always find a worker. (Writes of a few updates
    run on the loop when the switch lock is free at once; see `_run_small`.)
    """

    def __init__(self, switch: SoftSwitch, pool: Executor, max_streams: int = DEFAULT_MAX_STREAMS) -> None:
        self.sw = switch
        self._pool = pool
        self.max_streams = max_streams
        self.open_streams = 0  # only touched on the event loop

    async def _run(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    async def _run_small(self, fn: Callable[[], Any]) -> Any:
        """`fn`, a short call into the switch (a Write of a few updates): on the event loop itself when the
        switch lock is free at once, else on the pool like `_run`.

        The hop to a worker thread and back costs more than such a call (it halved the rate of single-update
        Writes); trying the lock without blocking keeps the guarantee that the loop never waits for a long batch.
        """
        done, result = self.sw.call_if_free(fn)
        if done:
            return result
        return await self._run(fn)

    @staticmethod
    async def _abort(context: grpc.aio.ServicerContext, exc: P4RuntimeError) -> NoReturn:
        await context.abort(_grpc_code(exc.code), exc.message)
        raise AssertionError("unreachable: grpc's abort raises")

    def _write(self, request: p4runtime_pb2.WriteRequest) -> bytes | None:
        """The batch applied; its grpc-status-details-bin when an update failed (made here, off the loop)."""
        _check_decoded(request)
        election = (request.election_id.high, request.election_id.low) if request.HasField("election_id") else None
        self.sw.check_writer(request.device_id, request.role, election)
        errors = self.sw.write(request)
        return write_status(errors) if errors is not None else None

    async def Write(self, request: p4runtime_pb2.WriteRequest,
                    context: grpc.aio.ServicerContext) -> p4runtime_pb2.WriteResponse:
        try:
            call = partial(self._write, request)
            small = not isinstance(request, Undecodable) and len(request.updates) <= INLINE_UPDATES
            details = await (self._run_small(call) if small else self._run(call))
        except P4RuntimeError as exc:
            log.info("Write refused: %s", exc)
            await self._abort(context, exc)
        if details is not None:
            await context.abort(grpc.StatusCode.UNKNOWN, "Write failure.",
                                trailing_metadata=(("grpc-status-details-bin", details),))
        return p4runtime_pb2.WriteResponse()

    async def Read(self, request: p4runtime_pb2.ReadRequest,
                   context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        try:
            _check_decoded(request)
            responses = await self._run(partial(self.sw.read_bytes, request))
        except P4RuntimeError as exc:
            log.info("Read refused: %s", exc)
            await self._abort(context, exc)
        for r in responses:
            yield r

    def _set_pipeline(self, request: p4runtime_pb2.SetForwardingPipelineConfigRequest) -> None:
        _check_decoded(request)
        election = (request.election_id.high, request.election_id.low) if request.HasField("election_id") else None
        self.sw.check_writer(request.device_id, request.role, election)
        self.sw.set_pipeline(request.action, request.config, request.HasField("config"))

    async def SetForwardingPipelineConfig(self, request: p4runtime_pb2.SetForwardingPipelineConfigRequest,
                                          context: grpc.aio.ServicerContext
                                          ) -> p4runtime_pb2.SetForwardingPipelineConfigResponse:
        try:
            await self._run(partial(self._set_pipeline, request))
        except P4RuntimeError as exc:
            log.warning("SetForwardingPipelineConfig refused: %s", exc)
            await self._abort(context, exc)
        return p4runtime_pb2.SetForwardingPipelineConfigResponse()

    def _get_pipeline(self, request: p4runtime_pb2.GetForwardingPipelineConfigRequest
                      ) -> p4runtime_pb2.ForwardingPipelineConfig:
        _check_decoded(request)
        self.sw.check_reader(request.device_id)
        return self.sw.get_pipeline(request.response_type)

    async def GetForwardingPipelineConfig(self, request: p4runtime_pb2.GetForwardingPipelineConfigRequest,
                                          context: grpc.aio.ServicerContext
                                          ) -> p4runtime_pb2.GetForwardingPipelineConfigResponse:
        try:
            config = await self._run(partial(self._get_pipeline, request))
        except P4RuntimeError as exc:
            await self._abort(context, exc)
        return p4runtime_pb2.GetForwardingPipelineConfigResponse(config=config)

    async def Capabilities(self, request: p4runtime_pb2.CapabilitiesRequest,
                           context: grpc.aio.ServicerContext) -> p4runtime_pb2.CapabilitiesResponse:
        if isinstance(request, Undecodable):
            await self._abort(context, request.error())
        return p4runtime_pb2.CapabilitiesResponse(p4runtime_api_version=api_version())

    async def StreamChannel(self, request_iterator: AsyncIterator[p4runtime_pb2.StreamMessageRequest],
                            context: grpc.aio.ServicerContext) -> AsyncIterator[p4runtime_pb2.StreamMessageResponse | bytes]:
        if self.open_streams >= self.max_streams:
            # Admission: past the limit a stream is refused at once instead of holding memory and an HTTP/2
            # stream for a client that may never arbitrate.
            log.warning("StreamChannel from %s refused: %d streams open", context.peer(), self.open_streams)
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"too many open StreamChannels (at most {self.max_streams}); close idle streams "
                                "or raise --grpc-max-streams")
        out = _StreamOut(asyncio.get_running_loop())

        def send(msg: p4runtime_pb2.StreamMessageResponse | bytes) -> None:
            # Called from port readers, the idle scanner and arbitration: must not block. A slow client loses
            # packet-ins (the messages that come as bytes) beyond PACKET_IN_QUEUE, never arbitration or
            # idle-timeout messages.
            if isinstance(msg, bytes) and len(out) >= PACKET_IN_QUEUE:
                self.sw.packet_ins_dropped += 1
                return
            out.put(msg)

        conn = Connection(send=send, peer=context.peer())
        self.open_streams += 1
        reader = asyncio.create_task(self._stream_reader(request_iterator, conn, out))
        log.debug("stream %d opened by %s", conn.id, conn.peer)
        try:
            while True:
                item = await out.get()
                if item is _END:
                    return
                if isinstance(item, _Abort):
                    await context.abort(_grpc_code(item.code), item.message)
                yield item
        finally:
            self.open_streams -= 1
            reader.cancel()
            self.sw.arbitration.remove(conn)
            log.debug("stream %d closed", conn.id)

    async def _stream_reader(self, requests: AsyncIterator[p4runtime_pb2.StreamMessageRequest], conn: Connection,
                             out: _StreamOut) -> None:
        try:
            async for req in requests:
                if isinstance(req, Undecodable):
                    err = req.error()
                    log.info("stream %d from %s: %s", conn.id, conn.peer, err.message)
                    out.put(_Abort(err.code, err.message))
                    return
                kind = req.WhichOneof("update")
                if kind == "arbitration":
                    try:
                        self.sw.arbitration.update(conn, req.arbitration)
                    except ArbitrationError as exc:
                        log.info("arbitration from %s refused: %s", conn.peer, exc.message)
                        out.put(_Abort(exc.code, exc.message))
                        return
                elif kind == "packet":
                    if not self.sw.arbitration.is_primary(conn):
                        log.debug("packet-out from non-primary %s ignored", conn)
                        continue
                    # on the loop when the switch lock is free at once (a hop to the pool and back per packet
                    # cost more than the packet); on the pool when a long Write batch holds it
                    err = await self._run_small(partial(self.sw.packet_out, req.packet))
                    if err is not None:
                        log.info("packet-out refused: %s", err.message)
                        conn.send(p4runtime_pb2.StreamMessageResponse(error=err))
                elif kind in ("digest_ack", "other"):
                    continue
        except asyncio.CancelledError:
            raise
        except grpc.RpcError:
            pass
        except Exception:
            log.exception("stream %d: reading requests failed", conn.id)
        out.put(_END)


class _StreamOut:
    """What a StreamChannel sends, in order: put from any thread (port readers, the idle scanner, arbitration,
    the stream's own reader) and taken by the stream's coroutine. The event loop is woken (a write to its
    self-pipe and a loop iteration) only when the coroutine sleeps, not for every packet-in: at thousands of
    packet-ins a second the per-packet wake-up was most of the loop thread's work."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._q: collections.deque[Any] = collections.deque()
        self._wake = asyncio.Event()
        self._sleeping = False

    def __len__(self) -> int:
        return len(self._q)

    def put(self, item: Any) -> None:
        self._q.append(item)
        if self._sleeping:
            self._sleeping = False
            with contextlib.suppress(RuntimeError):  # the loop is closed: the server is stopping
                self.loop.call_soon_threadsafe(self._wake.set)

    async def get(self) -> Any:
        while not self._q:
            # Say we sleep, then look again: a put() in between sees the flag and wakes us.
            self._sleeping = True
            if self._q:
                self._sleeping = False
                break
            await self._wake.wait()
            self._wake.clear()
        return self._q.popleft()


@dataclass(slots=True)
class Undecodable:
    """A request whose bytes are not a valid message: the handler refuses it with INVALID_ARGUMENT.

    gRPC's own deserialization would answer UNKNOWN ("Unexpected DecodeError") and log a traceback for every
    such request, which a hostile client could use to flood the log.
    """

    type_name: str
    reason: str

    def error(self) -> P4RuntimeError:
        return invalid(f"the request is not a valid {self.type_name} message ({self.reason}); check the client's "
                       "P4Runtime protos")


def _decoder(cls: Any) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except Exception as exc:  # DecodeError, or a binding's own error on deeply nested data
            return Undecodable(cls.DESCRIPTOR.full_name, str(exc) or type(exc).__name__)
    return decode


def _handlers(service: P4RuntimeService) -> grpc.GenericRpcHandler:
    """The P4Runtime methods with our request decoding (see Undecodable); otherwise what the generated
    add_P4RuntimeServicer_to_server registers."""
    pb = p4runtime_pb2

    def unary(fn: Any, req: Any, resp: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=_decoder(req),
                                                   response_serializer=resp.SerializeToString)

    return grpc.method_handlers_generic_handler("p4.v1.P4Runtime", {
        "Write": unary(service.Write, pb.WriteRequest, pb.WriteResponse),
        # Read yields ReadResponses already serialized (SoftSwitch.read_bytes)
        "Read": grpc.unary_stream_rpc_method_handler(service.Read, request_deserializer=_decoder(pb.ReadRequest),
                                                     response_serializer=bytes),
        "SetForwardingPipelineConfig": unary(service.SetForwardingPipelineConfig,
                                             pb.SetForwardingPipelineConfigRequest,
                                             pb.SetForwardingPipelineConfigResponse),
        "GetForwardingPipelineConfig": unary(service.GetForwardingPipelineConfig,
                                             pb.GetForwardingPipelineConfigRequest,
                                             pb.GetForwardingPipelineConfigResponse),
        "StreamChannel": grpc.stream_stream_rpc_method_handler(
            service.StreamChannel, request_deserializer=_decoder(pb.StreamMessageRequest),
            response_serializer=_serialize_stream),
        "Capabilities": unary(service.Capabilities, pb.CapabilitiesRequest, pb.CapabilitiesResponse),
    })


def write_status(errors: list[p4runtime_pb2.Error], budget: int = DETAILS_BUDGET) -> bytes:
    """The grpc-status-details-bin of a failed batch: one p4.v1.Error per update, in order (as PI sends).

    The whole trailer must stay under the client's metadata limit or the client gets RESOURCE_EXHAUSTED and none
    of the statuses. So when the messages do not fit in `budget` bytes, the first ones that fit keep their
    message and the rest carry only their code (the log has every message). An update's status without a
    message still costs ~40 bytes, so a batch of more than ~200 updates exceeds gRPC's default 8 KB soft limit
    whatever the server does; only a client that raised its channel's grpc.max_metadata_size can take that
    answer, and it then gets every message (each bounded, see schema.show_bytes).
    """
    status = status_pb2.Status(code=code_pb2.UNKNOWN, message="Write failure.")
    bare = p4runtime_pb2.Error()
    details: list[any_pb2.Any] = []
    extra: list[int] = []  # bytes each message adds
    for err in errors:
        full = any_pb2.Any()
        full.Pack(err)
        details.append(full)
        if err.message or err.space:
            bare.Clear()
            bare.canonical_code = err.canonical_code
            short = any_pb2.Any()
            short.Pack(bare)
            extra.append(full.ByteSize() - short.ByteSize())
        else:
            extra.append(0)
    status.details.extend(details)
    size = status.ByteSize()
    room = budget - (size - sum(extra))
    if size <= budget:
        return status.SerializeToString()
    if room < 0:
        # Too many updates for the default limit even without messages: only a client that raised its limit can
        # take the answer, so give it every message.
        log.warning("Write: the statuses of %d updates need %d bytes of trailer, more than gRPC clients accept by "
                    "default; such a client sees RESOURCE_EXHAUSTED unless it raises grpc.max_metadata_size (or "
                    "sends smaller batches)", len(errors), size)
        return status.SerializeToString()
    for i, err in enumerate(errors):
        if not extra[i]:
            continue
        if extra[i] <= room:
            room -= extra[i]
            continue
        bare.Clear()
        bare.canonical_code = err.canonical_code
        status.details[i].Pack(bare)
    return status.SerializeToString()


class ServerStartError(RuntimeError):
    """The gRPC server could not listen (busy or invalid address, unreadable TLS files); one line."""


@dataclass
class TlsOptions:
    cert: bytes
    key: bytes
    cacert: bytes | None = None
    require_client_auth: bool = False


def _check_bindable(addr: str) -> None:
    """A busy or bad address as one clear line (gRPC itself logs a multi-line C-core error and returns 0)."""
    host, sep, port_s = addr.rpartition(":")
    host = host.strip("[]")
    if not sep or not port_s.isdigit():
        raise ServerStartError(f"--grpc-server-addr {addr}: expected HOST:PORT, e.g. 127.0.0.1:9559")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host or "0.0.0.0", int(port_s)))
    except OSError as exc:
        reason = "the address is in use; stop the other switch or pick another --grpc-server-addr" \
            if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise ServerStartError(f"cannot listen on {addr}: {reason}") from None


class P4RuntimeServer:
    """The running gRPC server: a grpc.aio server on an event loop of its own thread, and the worker pool that
    runs the switch calls. `stop` returns an Event like grpc.Server.stop, so callers can wait for it."""

    def __init__(self, switch: SoftSwitch, addr: str, tls: TlsOptions | None = None, workers: int = DEFAULT_WORKERS,
                 max_streams: int = DEFAULT_MAX_STREAMS) -> None:
        self.switch = switch
        self.addr = addr
        self.tls = tls
        self.pool = futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc")
        self.service = P4RuntimeService(switch, self.pool, max_streams)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="grpc-loop", daemon=True)
        self._server: grpc.aio.Server | None = None
        self._stopped: threading.Event | None = None

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def _start(self) -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0),
                                          ("grpc.max_receive_message_length", 256 << 20)])
        server.add_generic_rpc_handlers((_handlers(self.service),))
        try:
            if self.tls is None:
                port = server.add_insecure_port(self.addr)
            else:
                creds = grpc.ssl_server_credentials([(self.tls.key, self.tls.cert)],
                                                    root_certificates=self.tls.cacert,
                                                    require_client_auth=self.tls.require_client_auth)
                port = server.add_secure_port(self.addr, creds)
        except RuntimeError:
            port = 0
        if port == 0:
            raise ServerStartError(f"cannot listen on {self.addr}: the address is in use or invalid; stop the other "
                                   "switch or pick another --grpc-server-addr")
        await server.start()
        self._server = server

    def start(self) -> P4RuntimeServer:
        _check_bindable(self.addr)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start(), self._loop).result()
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self.pool.shutdown(wait=False)
            raise
        return self

    def stop(self, grace: float | None = None) -> threading.Event:
        """Stop serving (in-flight RPCs get `grace` seconds); the Event is set once the loop has ended."""
        if self._stopped is not None:
            return self._stopped
        done = self._stopped = threading.Event()
        server = self._server

        async def _stop() -> None:
            if server is not None:
                await server.stop(grace)

        def _finish(_: Any) -> None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self.pool.shutdown(wait=False)
            done.set()

        try:
            asyncio.run_coroutine_threadsafe(_stop(), self._loop).add_done_callback(
                lambda f: threading.Thread(target=_finish, args=(f,), name="grpc-stop", daemon=True).start())
        except RuntimeError:  # the loop has already ended
            done.set()
        return done


def serve(switch: SoftSwitch, addr: str, tls: TlsOptions | None = None, workers: int = DEFAULT_WORKERS,
          max_streams: int = DEFAULT_MAX_STREAMS) -> P4RuntimeServer:
    """Start the P4Runtime gRPC server for `switch` on `addr`; raises ServerStartError when it cannot listen."""
    server = P4RuntimeServer(switch, addr, tls, workers, max_streams).start()
    switch.start()
    return server
