"""softswitch's P4Runtime server at the gRPC level, with raw protos: pipeline config, arbitration, per-update
errors, reads, idle timeouts and packet I/O (ports replaced by in-memory sinks), and the command line.

The server runs in-process (fast, no root); the command-line tests start `python -m softswitch`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import text_format
from google.rpc import code_pb2, status_pb2
from p4.config.v1 import p4info_pb2
from p4.v1 import p4runtime_pb2, p4runtime_pb2_grpc

from offloadgen.build import build
from offloadgen.profile import load_profile
from offloadgen.switchproc import free_grpc_addr
from softswitch.server import P4RuntimeServer, SoftSwitch, serve

REPO = Path(__file__).resolve().parents[2]
DEVICE = 1
CPU = 255


# ---- fixtures and helpers ----------------------------------------------------------------------------------
@dataclasses.dataclass
class Artifacts:
    p4info: p4info_pb2.P4Info
    source: bytes
    bmv2_json: bytes | None

    def config(self, cookie: int | None = None) -> p4runtime_pb2.ForwardingPipelineConfig:
        c = p4runtime_pb2.ForwardingPipelineConfig(p4info=self.p4info, p4_device_config=self.source)
        if cookie is not None:
            c.cookie.cookie = cookie
        return c

    def id(self, kind: str, name: str) -> int:
        for obj in getattr(self.p4info, kind):
            if name in (obj.preamble.name, obj.preamble.alias):
                return int(obj.preamble.id)
        raise KeyError(name)


def _artifacts(out: Path, profile: Any, use_p4c: bool = True) -> Artifacts:
    res = build(profile, out, use_p4c=use_p4c)
    assert res.p4info is not None
    info = p4info_pb2.P4Info()
    text_format.Parse(res.p4info.read_text(), info)
    return Artifacts(info, res.p4.read_bytes(), res.bmv2_json.read_bytes() if res.bmv2_json else None)


@pytest.fixture(scope="session")
def art(tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    return _artifacts(tmp_path_factory.mktemp("build"), load_profile(REPO / "profiles" / "default.toml"))


class Sink:
    """A port that records what the switch sends."""

    def __init__(self) -> None:
        self.frames: queue.Queue[bytes] = queue.Queue()

    def send(self, frame: bytes) -> None:
        self.frames.put(frame)


@dataclasses.dataclass
class Rig:
    sw: SoftSwitch
    addr: str
    stub: p4runtime_pb2_grpc.P4RuntimeStub
    sinks: dict[int, Sink]
    server: P4RuntimeServer


@pytest.fixture
def rig() -> Iterator[Rig]:
    sw = SoftSwitch(DEVICE, CPU)
    sinks = {1: Sink(), 2: Sink()}
    for n, s in sinks.items():
        sw.add_port(n, s)
    addr = free_grpc_addr()
    server = serve(sw, addr)
    channel = grpc.insecure_channel(addr)
    try:
        yield Rig(sw, addr, p4runtime_pb2_grpc.P4RuntimeStub(channel), sinks, server)
    finally:
        channel.close()
        server.stop(0).wait(5)
        sw.stop()


class Stream:
    """A StreamChannel client: requests through a queue, responses sorted by kind."""

    def __init__(self, stub: p4runtime_pb2_grpc.P4RuntimeStub) -> None:
        self._out: queue.Queue[p4runtime_pb2.StreamMessageRequest | None] = queue.Queue()
        self.inbox: dict[str, queue.Queue[Any]] = {k: queue.Queue() for k in
                                                   ("arbitration", "packet", "idle_timeout_notification", "error")}
        self.ended: grpc.RpcError | None = None
        self.done = threading.Event()
        self._call = stub.StreamChannel(iter(self._out.get, None))
        threading.Thread(target=self._recv, daemon=True).start()

    def _recv(self) -> None:
        try:
            for msg in self._call:
                self.inbox[msg.WhichOneof("update")].put(msg)
        except grpc.RpcError as exc:
            self.ended = exc
        self.done.set()

    def arbitrate(self, election: tuple[int, int] | None, device_id: int = DEVICE) -> p4runtime_pb2.StreamMessageResponse:
        req = p4runtime_pb2.StreamMessageRequest()
        req.arbitration.device_id = device_id
        if election is not None:
            req.arbitration.election_id.high, req.arbitration.election_id.low = election
        self._out.put(req)
        return self.get("arbitration")

    def send(self, req: p4runtime_pb2.StreamMessageRequest) -> None:
        self._out.put(req)

    def get(self, kind: str, timeout: float = 3.0) -> Any:
        try:
            return self.inbox[kind].get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no {kind} message within {timeout} s (stream ended: {self.ended})") from None

    def close(self) -> None:
        self._out.put(None)
        self.done.wait(3)


def set_config(rig: Rig, art: Artifacts, election: tuple[int, int] | None = (0, 1), cookie: int | None = None,
               action: int = p4runtime_pb2.SetForwardingPipelineConfigRequest.VERIFY_AND_COMMIT,
               config: p4runtime_pb2.ForwardingPipelineConfig | None = None) -> None:
    req = p4runtime_pb2.SetForwardingPipelineConfigRequest(device_id=DEVICE, action=action)
    if election is not None:
        req.election_id.high, req.election_id.low = election
    req.config.CopyFrom(config if config is not None else art.config(cookie))
    rig.stub.SetForwardingPipelineConfig(req, timeout=10)


@pytest.fixture
def primary(rig: Rig, art: Artifacts) -> Iterator[Stream]:
    s = Stream(rig.stub)
    assert s.arbitrate((0, 1)).arbitration.status.code == code_pb2.OK
    set_config(rig, art, cookie=7)
    yield s
    s.close()


def flow(art: Artifacts, in_port: int = 1, src: int = 0x0A000001, dst: int = 0x0A000002, sport: int = 1234,
         dport: int = 80, out_port: int = 2, ttl_ns: int = 0) -> p4runtime_pb2.TableEntry:
    te = p4runtime_pb2.TableEntry(table_id=art.id("tables", "ingress.flow_v4"), idle_timeout_ns=ttl_ns)
    for fid, v in enumerate((in_port, src, dst, 6, sport, dport), start=1):
        te.match.add(field_id=fid).exact.value = enc(v)
    te.action.action.action_id = art.id("actions", "ingress.offload")
    for pid, v in enumerate((out_port, 0x020000000001, 0x020000000002), start=1):
        te.action.action.params.add(param_id=pid, value=enc(v))
    return te


def enc(v: int) -> bytes:
    return v.to_bytes(max(1, (v.bit_length() + 7) // 8), "big")


def write(rig: Rig, *updates: tuple[int, p4runtime_pb2.Entity | p4runtime_pb2.TableEntry],
          election: tuple[int, int] | None = (0, 1), device_id: int = DEVICE) -> None:
    req = p4runtime_pb2.WriteRequest(device_id=device_id)
    if election is not None:
        req.election_id.high, req.election_id.low = election
    for op, ent in updates:
        u = req.updates.add(type=op)
        if isinstance(ent, p4runtime_pb2.TableEntry):
            u.entity.table_entry.CopyFrom(ent)
        else:
            u.entity.CopyFrom(ent)
    rig.stub.Write(req, timeout=5)


def write_errors(exc: grpc.RpcError) -> list[p4runtime_pb2.Error]:
    assert exc.code() == grpc.StatusCode.UNKNOWN, exc
    md = dict(exc.trailing_metadata() or ())
    status = status_pb2.Status.FromString(md["grpc-status-details-bin"])
    out = []
    for d in status.details:
        e = p4runtime_pb2.Error()
        assert d.Unpack(e)
        out.append(e)
    return out


def read(rig: Rig, *entities: p4runtime_pb2.Entity) -> list[p4runtime_pb2.Entity]:
    req = p4runtime_pb2.ReadRequest(device_id=DEVICE, entities=entities)
    return [e for resp in rig.stub.Read(req, timeout=5) for e in resp.entities]


def rpc_code(fn: Callable[[], object]) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value.code()


INSERT, MODIFY, DELETE = p4runtime_pb2.Update.INSERT, p4runtime_pb2.Update.MODIFY, p4runtime_pb2.Update.DELETE
SetReq = p4runtime_pb2.SetForwardingPipelineConfigRequest
GetReq = p4runtime_pb2.GetForwardingPipelineConfigRequest


# ---- pipeline config ---------------------------------------------------------------------------------------
def test_capabilities_and_no_pipeline(rig: Rig) -> None:
    assert rig.stub.Capabilities(p4runtime_pb2.CapabilitiesRequest()).p4runtime_api_version.startswith("1.")
    get = GetReq(device_id=DEVICE)
    assert rpc_code(lambda: rig.stub.GetForwardingPipelineConfig(get)) == grpc.StatusCode.FAILED_PRECONDITION
    assert rpc_code(lambda: read(rig, p4runtime_pb2.Entity(table_entry={}))) == grpc.StatusCode.FAILED_PRECONDITION


def test_verify_refuses_bad_device_configs(rig: Rig, art: Artifacts) -> None:
    def verify(config: p4runtime_pb2.ForwardingPipelineConfig) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as info:
            set_config(rig, art, election=None, action=SetReq.VERIFY, config=config)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        return info.value

    set_config(rig, art, election=None, action=SetReq.VERIFY)  # a good config verifies
    bmv2_json = art.bmv2_json or b'{"__meta__": {"version": [2, 23]}, "header_types": []}'
    assert "BMv2 JSON" in verify(p4runtime_pb2.ForwardingPipelineConfig(p4info=art.p4info,
                                                                         p4_device_config=bmv2_json)).details()
    assert "flowtable.p4" in verify(p4runtime_pb2.ForwardingPipelineConfig(p4info=art.p4info,
                                                                           p4_device_config=b"\xff\xfe garbage")).details()
    verify(p4runtime_pb2.ForwardingPipelineConfig(p4info=art.p4info, p4_device_config=b"control c() { garbage"))
    other = p4info_pb2.P4Info()
    other.CopyFrom(art.p4info)
    other.tables[0].match_fields[0].bitwidth = 10
    assert "P4Info does not describe" in verify(p4runtime_pb2.ForwardingPipelineConfig(
        p4info=other, p4_device_config=art.source)).details()
    # VERIFY changed nothing
    assert rpc_code(lambda: rig.stub.GetForwardingPipelineConfig(GetReq(device_id=DEVICE))) == \
        grpc.StatusCode.FAILED_PRECONDITION


def test_get_config_response_types_and_cookie(rig: Rig, art: Artifacts, primary: Stream) -> None:
    def get(rt: int) -> p4runtime_pb2.ForwardingPipelineConfig:
        return rig.stub.GetForwardingPipelineConfig(GetReq(device_id=DEVICE, response_type=rt)).config

    c = get(GetReq.ALL)
    assert c.p4info == art.p4info and c.p4_device_config == art.source and c.cookie.cookie == 7
    c = get(GetReq.COOKIE_ONLY)
    assert not c.HasField("p4info") and not c.p4_device_config and c.cookie.cookie == 7
    c = get(GetReq.P4INFO_AND_COOKIE)
    assert c.p4info == art.p4info and not c.p4_device_config and c.cookie.cookie == 7
    c = get(GetReq.DEVICE_CONFIG_AND_COOKIE)
    assert not c.HasField("p4info") and c.p4_device_config == art.source


def test_reconcile_keeps_entries_and_commit_clears_them(rig: Rig, art: Artifacts, primary: Stream) -> None:
    write(rig, (INSERT, flow(art)))
    set_config(rig, art, cookie=8, action=SetReq.RECONCILE_AND_COMMIT)
    assert len(read(rig, p4runtime_pb2.Entity(table_entry={"table_id": art.id("tables", "flow_v4")}))) == 1
    set_config(rig, art, cookie=9)
    assert read(rig, p4runtime_pb2.Entity(table_entry={"table_id": art.id("tables", "flow_v4")})) == []


# ---- arbitration -------------------------------------------------------------------------------------------
def test_arbitration_primary_backup_and_failover(rig: Rig, art: Artifacts) -> None:
    a = Stream(rig.stub)
    ra = a.arbitrate((0, 5)).arbitration
    assert ra.status.code == code_pb2.OK and (ra.election_id.high, ra.election_id.low) == (0, 5)
    set_config(rig, art, election=(0, 5))
    b = Stream(rig.stub)
    rb = b.arbitrate((0, 3)).arbitration
    assert rb.status.code == code_pb2.ALREADY_EXISTS and rb.election_id.low == 5  # the primary's election id
    # the backup cannot write but can read
    assert rpc_code(lambda: write(rig, (INSERT, flow(art)), election=(0, 3))) == grpc.StatusCode.PERMISSION_DENIED
    assert rpc_code(lambda: write(rig, (INSERT, flow(art)), election=None)) == grpc.StatusCode.PERMISSION_DENIED
    assert read(rig, p4runtime_pb2.Entity(table_entry={"table_id": art.id("tables", "flow_v4")})) == []
    write(rig, (INSERT, flow(art)), election=(0, 5))
    # a duplicate election id ends the stream with INVALID_ARGUMENT
    c = Stream(rig.stub)
    c.send(p4runtime_pb2.StreamMessageRequest(arbitration={"device_id": DEVICE, "election_id": {"low": 5}}))
    assert c.done.wait(3) and c.ended is not None and c.ended.code() == grpc.StatusCode.INVALID_ARGUMENT
    # an unknown device id: NOT_FOUND
    d = Stream(rig.stub)
    d.send(p4runtime_pb2.StreamMessageRequest(arbitration={"device_id": 42, "election_id": {"low": 9}}))
    assert d.done.wait(3) and d.ended is not None and d.ended.code() == grpc.StatusCode.NOT_FOUND
    # the primary leaves: the backup becomes primary and is told so
    a.close()
    rb = b.get("arbitration").arbitration
    assert rb.status.code == code_pb2.OK and rb.election_id.low == 3
    write(rig, (DELETE, flow(art)), election=(0, 3))
    # a higher election id takes over; the old primary is told it is a backup now
    e = Stream(rig.stub)
    assert e.arbitrate((1, 0)).arbitration.status.code == code_pb2.OK
    rb = b.get("arbitration").arbitration
    assert rb.status.code == code_pb2.ALREADY_EXISTS and rb.election_id.high == 1
    for s in (b, e):
        s.close()


# ---- writes ------------------------------------------------------------------------------------------------
def test_batch_errors_per_update(rig: Rig, art: Artifacts, primary: Stream) -> None:
    good = flow(art)
    unknown_table = flow(art, sport=1)
    unknown_table.table_id = 12345
    too_wide = flow(art, sport=2)
    too_wide.match[0].exact.value = b"\x02\x00"  # 512 does not fit in 9 bits
    padded = flow(art, sport=3)
    padded.match[4].exact.value = b"\x00\x03"
    missing_field = flow(art, sport=4)
    del missing_field.match[5]
    missing_param = flow(art, sport=5)
    del missing_param.action.action.params[2]
    default_only = flow(art, sport=6)
    default_only.action.action.ClearField("params")
    default_only.action.action.action_id = art.id("actions", "ingress.miss")
    with pytest.raises(grpc.RpcError) as info:
        write(rig, (INSERT, good), (INSERT, good), (INSERT, unknown_table), (INSERT, too_wide), (INSERT, padded),
              (INSERT, missing_field), (INSERT, missing_param), (DELETE, flow(art, sport=99)),
              (MODIFY, flow(art, sport=99)), (INSERT, default_only))
    codes = [e.canonical_code for e in write_errors(info.value)]
    # as the spec says: too wide is OUT_OF_RANGE, a zero-padded string is accepted (--strict-bytestrings refuses it)
    assert codes == [code_pb2.OK, code_pb2.ALREADY_EXISTS, code_pb2.INVALID_ARGUMENT, code_pb2.OUT_OF_RANGE,
                     code_pb2.OK, code_pb2.INVALID_ARGUMENT, code_pb2.INVALID_ARGUMENT,
                     code_pb2.NOT_FOUND, code_pb2.NOT_FOUND, code_pb2.PERMISSION_DENIED]
    # the const table refuses writes
    mtu = p4runtime_pb2.TableEntry(table_id=art.id("tables", "port_mtu"))
    mtu.match.add(field_id=1).exact.value = b"\x09"
    mtu.action.action.action_id = art.id("actions", "set_mtu")
    mtu.action.action.params.add(param_id=1, value=b"\x05\xdc")
    with pytest.raises(grpc.RpcError) as info:
        write(rig, (INSERT, mtu))
    assert [e.canonical_code for e in write_errors(info.value)] == [code_pb2.PERMISSION_DENIED]


def test_full_table_is_resource_exhausted(rig: Rig, tmp_path: Path) -> None:
    small = dataclasses.replace(load_profile(REPO / "profiles" / "minimal.toml"), ipv4_table_size=2)
    art = _artifacts(tmp_path, small, use_p4c=False)
    s = Stream(rig.stub)
    s.arbitrate((0, 1))
    set_config(rig, art)
    with pytest.raises(grpc.RpcError) as info:
        write(rig, *[(INSERT, flow(art, sport=p)) for p in (1, 2, 3)])
    assert [e.canonical_code for e in write_errors(info.value)] == [code_pb2.OK, code_pb2.OK,
                                                                    code_pb2.RESOURCE_EXHAUSTED]
    s.close()


def test_modify_default_entry_and_counters(rig: Rig, art: Artifacts, primary: Stream) -> None:
    t = art.id("tables", "flow_v4")
    write(rig, (INSERT, flow(art)))
    # MODIFY keeps counters unless counter_data is set; direct counter entries write them
    dce = p4runtime_pb2.DirectCounterEntry(table_entry=flow(art))
    dce.table_entry.ClearField("action")
    dce.data.packet_count, dce.data.byte_count = 5, 500
    write(rig, (MODIFY, p4runtime_pb2.Entity(direct_counter_entry=dce)))
    write(rig, (MODIFY, flow(art, out_port=1)))
    want = p4runtime_pb2.TableEntry(table_id=t, counter_data={})
    (e,) = read(rig, p4runtime_pb2.Entity(table_entry=want))
    assert e.table_entry.counter_data.packet_count == 5 and e.table_entry.counter_data.byte_count == 500
    assert e.table_entry.action.action.params[0].value == b"\x01"
    got = read(rig, p4runtime_pb2.Entity(direct_counter_entry={"table_entry": {"table_id": t}}))
    assert got[0].direct_counter_entry.data.packet_count == 5
    # default entry: modify to the default-only action, read back, reset
    de = p4runtime_pb2.TableEntry(table_id=t, is_default_action=True, controller_metadata=3)
    de.action.action.action_id = art.id("actions", "ingress.miss")
    write(rig, (MODIFY, de))
    (d,) = read(rig, p4runtime_pb2.Entity(table_entry={"table_id": t, "is_default_action": True}))
    assert d.table_entry.is_default_action and d.table_entry.controller_metadata == 3
    with pytest.raises(grpc.RpcError) as info:
        write(rig, (INSERT, de), (DELETE, de))
    assert [x.canonical_code for x in write_errors(info.value)] == [code_pb2.INVALID_ARGUMENT] * 2
    # indirect counters
    cid = art.id("counters", "punt_counter")
    ce = p4runtime_pb2.CounterEntry(counter_id=cid, index={"index": 3}, data={"packet_count": 2, "byte_count": 20})
    write(rig, (MODIFY, p4runtime_pb2.Entity(counter_entry=ce)))
    all_c = read(rig, p4runtime_pb2.Entity(counter_entry={"counter_id": cid}))
    size = next(c.size for c in art.p4info.counters if c.preamble.id == cid)  # one cell per punt reason code
    assert size > 3 and len(all_c) == size and all_c[3].counter_entry.data.packet_count == 2


def test_reads(rig: Rig, art: Artifacts, primary: Stream) -> None:
    t = art.id("tables", "flow_v4")
    e1, e2 = flow(art, sport=1), flow(art, sport=2, ttl_ns=60_000_000_000)
    e1.controller_metadata = 11
    e2.metadata = b"cookie"
    write(rig, (INSERT, e1), (INSERT, e2))
    everything = read(rig, p4runtime_pb2.Entity(table_entry={}))
    assert {x.table_entry.table_id for x in everything} >= {t, art.id("tables", "port_mtu")}
    mtu = [x.table_entry for x in everything if x.table_entry.table_id == art.id("tables", "port_mtu")]
    assert len(mtu) == 4  # the const entries, read like any other
    one = p4runtime_pb2.TableEntry(table_id=t, match=e2.match, time_since_last_hit={})
    (got,) = read(rig, p4runtime_pb2.Entity(table_entry=one))
    assert got.table_entry.match == e2.match and got.table_entry.metadata == b"cookie"
    assert got.table_entry.idle_timeout_ns == 60_000_000_000
    assert 0 <= got.table_entry.time_since_last_hit.elapsed_ns < 10_000_000_000
    assert not got.table_entry.HasField("counter_data")
    by_cookie = read(rig, p4runtime_pb2.Entity(table_entry={"table_id": t, "controller_metadata": 11}))
    assert [x.table_entry.match for x in by_cookie] == [e1.match]
    # time_since_last_hit on a table without idle timeout is refused
    mtu_req = p4runtime_pb2.TableEntry(table_id=art.id("tables", "port_mtu"), time_since_last_hit={})
    assert rpc_code(lambda: read(rig, p4runtime_pb2.Entity(table_entry=mtu_req))) == grpc.StatusCode.INVALID_ARGUMENT


# ---- idle timeouts and packet I/O --------------------------------------------------------------------------
def test_idle_timeout_notification_and_renotify(rig: Rig, art: Artifacts, primary: Stream) -> None:
    e = flow(art, ttl_ns=150_000_000)
    e.controller_metadata = 77
    t0 = time.monotonic()
    write(rig, (INSERT, e))
    n = primary.get("idle_timeout_notification", timeout=2).idle_timeout_notification
    first = time.monotonic() - t0
    assert 0.14 <= first < 0.6, first
    (te,) = n.table_entry
    assert te.table_id == e.table_id and te.match == e.match and te.controller_metadata == 77
    assert te.idle_timeout_ns == 150_000_000 and n.timestamp > 0
    primary.get("idle_timeout_notification", timeout=2)  # still idle: notified again after another TTL
    assert time.monotonic() - t0 >= 0.29
    write(rig, (DELETE, e))


def tcp_frame(sport: int = 1234, flags: int = 0x10) -> bytes:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    return bytes(Ether(src="02:00:00:00:00:0a", dst="02:00:00:00:01:01") /
                 IP(src="10.0.0.1", dst="10.0.0.2", ttl=64) / TCP(sport=sport, dport=80, flags=flags) / b"hello")


def test_packet_in_and_packet_out(rig: Rig, art: Artifacts, primary: Stream) -> None:
    frame = tcp_frame(sport=4321)  # no entry: a miss, to the CPU
    rig.sw.receive(1, frame)
    p = primary.get("packet").packet
    md = {m.metadata_id: m.value for m in p.metadata}
    pin = next(h for h in art.p4info.controller_packet_metadata if h.preamble.name == "packet_in")
    ids = {m.name: m.id for m in pin.metadata}
    assert p.payload == frame and md[ids["ingress_port"]] == b"\x01" and md[ids["reason"]] == b"\x01"
    # packet-out to port 2, as from the CPU port
    out = p4runtime_pb2.StreamMessageRequest()
    out.packet.payload = frame
    out.packet.metadata.add(metadata_id=1, value=b"\x02")
    primary.send(out)
    assert rig.sinks[2].frames.get(timeout=2) == frame
    # a bad packet-out gets a StreamError
    bad = p4runtime_pb2.StreamMessageRequest()
    bad.packet.payload = frame
    bad.packet.metadata.add(metadata_id=99, value=b"\x02")
    primary.send(bad)
    err = primary.get("error").error
    assert err.canonical_code == code_pb2.INVALID_ARGUMENT and err.packet_out.packet_out.payload == frame
    # a hit is forwarded with new MACs and TTL-1
    write(rig, (INSERT, flow(art, sport=1234)))
    rig.sw.receive(1, tcp_frame(sport=1234))
    fwd = rig.sinks[2].frames.get(timeout=2)
    assert fwd[:12] == bytes.fromhex("020000000002020000000001") and fwd[22] == 63


# ---- hostile and careless clients -------------------------------------------------------------------------
IDLE_STREAMS = 1000
IDLE_DEADLINE = 120.0  # the idle streams' own deadline: everything the primary asks must be answered before it


class IdleStreams:
    """StreamChannels that never send anything, opened on their own connection by an asyncio client (1,000
    sync-client streams would need 1,000 request threads in this process)."""

    def __init__(self, addr: str, n: int, deadline: float) -> None:
        self.addr, self.n, self.deadline = addr, n, deadline
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.calls: list[Any] = []
        self.channel: grpc.aio.Channel | None = None

    def __enter__(self) -> IdleStreams:
        self.thread.start()

        async def open_all() -> None:
            # a local subchannel pool: a connection of their own, not the primary's
            self.channel = grpc.aio.insecure_channel(self.addr, options=[("grpc.use_local_subchannel_pool", 1)])
            stub = p4runtime_pb2_grpc.P4RuntimeStub(self.channel)
            self.calls = [stub.StreamChannel(timeout=self.deadline) for _ in range(self.n)]
            await asyncio.gather(*(c.wait_for_connection() for c in self.calls))

        asyncio.run_coroutine_threadsafe(open_all(), self.loop).result(60)
        return self

    def alive(self) -> int:
        return sum(not c.done() for c in self.calls)

    def __exit__(self, *exc: object) -> None:
        async def close() -> None:
            for c in self.calls:
                c.cancel()
            if self.channel is not None:
                await self.channel.close()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_idle_streams_do_not_starve_the_primary(rig: Rig, art: Artifacts, primary: Stream) -> None:
    """1,000 StreamChannels that send nothing: the primary's Write, Read and Capabilities are all answered while
    they are still open (before their deadline), it stays primary, and its packet-ins still arrive."""
    started = time.monotonic()
    with IdleStreams(rig.addr, IDLE_STREAMS, IDLE_DEADLINE) as idle:
        wait_until(lambda: rig.server.service.open_streams >= IDLE_STREAMS + 1, 60, "the idle streams to open")
        remaining = IDLE_DEADLINE - (time.monotonic() - started) - 5
        for sport in range(20):
            req = p4runtime_pb2.WriteRequest(device_id=DEVICE, election_id={"low": 1})
            req.updates.add(type=INSERT).entity.table_entry.CopyFrom(flow(art, sport=sport))
            rig.stub.Write(req, timeout=remaining)
        got = [e for r in rig.stub.Read(p4runtime_pb2.ReadRequest(
            device_id=DEVICE, entities=[{"table_entry": {"table_id": art.id("tables", "flow_v4")}}]), timeout=remaining)
            for e in r.entities]
        assert len(got) == 20
        assert rig.stub.Capabilities(p4runtime_pb2.CapabilitiesRequest(), timeout=remaining).p4runtime_api_version
        rig.sw.receive(1, tcp_frame(sport=999))  # a miss: packet-in to the primary
        assert primary.get("packet").packet.payload == tcp_frame(sport=999)
        # answered while every idle stream was still open, i.e. before their deadline
        assert idle.alive() == IDLE_STREAMS
        assert rig.server.service.open_streams >= IDLE_STREAMS + 1
    # still the primary: its election id still writes
    write(rig, (DELETE, flow(art, sport=0)))


def test_stream_admission_limit(art: Artifacts) -> None:
    sw = SoftSwitch(DEVICE, CPU)
    addr = free_grpc_addr()
    server = serve(sw, addr, max_streams=2)
    channel = grpc.insecure_channel(addr)
    stub = p4runtime_pb2_grpc.P4RuntimeStub(channel)
    try:
        a, b = Stream(stub), Stream(stub)
        assert a.arbitrate((0, 1)).arbitration.status.code == code_pb2.OK
        wait_until(lambda: server.service.open_streams == 2, 10, "two streams")
        c = Stream(stub)
        assert c.done.wait(5) and c.ended is not None and c.ended.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--grpc-max-streams" in (c.ended.details() or "")
        b.close()  # a slot frees up
        wait_until(lambda: server.service.open_streams == 1, 10, "the closed stream to go")
        d = Stream(stub)
        assert d.arbitrate((0, 2)).arbitration.status.code == code_pb2.OK
        for s in (a, d):
            s.close()
    finally:
        channel.close()
        server.stop(0).wait(5)
        sw.stop()


def test_over_wide_value_is_out_of_range_with_a_short_message(rig: Rig, art: Artifacts, primary: Stream) -> None:
    wide = flow(art)
    wide.match[1].exact.value = b"\x5a" * 8192
    with pytest.raises(grpc.RpcError) as info:
        write(rig, (INSERT, wide))
    (err,) = write_errors(info.value)
    assert err.canonical_code == code_pb2.OUT_OF_RANGE
    assert "8192 bytes" in err.message and err.message.count("5a") <= 100, err.message
    assert len(err.message) <= 400


BIG_TRAILERS = [("grpc.max_metadata_size", 1 << 20), ("grpc.absolute_max_metadata_size", 1 << 20)]


def test_a_batch_of_failing_updates_returns_every_status(rig: Rig, art: Artifacts, primary: Stream) -> None:
    """A batch as large as the controller sends (128) whose every update fails with a long message reaches a
    client with gRPC's default metadata limit with every status; a 1,000-update batch reaches a client that
    raised its limit with every status and message."""
    def batch(n: int) -> p4runtime_pb2.WriteRequest:
        req = p4runtime_pb2.WriteRequest(device_id=DEVICE, election_id={"low": 1})
        for i in range(n):
            te = flow(art, sport=i)
            if i % 2:
                te.table_id = 4242  # the message lists every table
            else:
                te.match[1].exact.value = b"\x01" * 8192
            req.updates.add(type=INSERT).entity.table_entry.CopyFrom(te)
        return req

    for _ in range(3):  # the client's soft limit refuses at random: a pass by luck would not repeat
        with pytest.raises(grpc.RpcError) as info:
            rig.stub.Write(batch(128), timeout=30)
        errs = write_errors(info.value)
        assert [e.canonical_code for e in errs] == [code_pb2.OUT_OF_RANGE, code_pb2.INVALID_ARGUMENT] * 64
        assert errs[0].message  # the first ones keep their message
    with grpc.insecure_channel(rig.addr, options=BIG_TRAILERS) as channel:
        with pytest.raises(grpc.RpcError) as info:
            p4runtime_pb2_grpc.P4RuntimeStub(channel).Write(batch(1000), timeout=60)
        errs = write_errors(info.value)
    assert [e.canonical_code for e in errs] == [code_pb2.OUT_OF_RANGE, code_pb2.INVALID_ARGUMENT] * 500
    assert all(e.message and len(e.message) <= 400 for e in errs)


def test_unknown_device_id_is_not_found(rig: Rig, art: Artifacts, primary: Stream) -> None:
    """The specification's answer (BMv2 says PERMISSION_DENIED to writes, FAILED_PRECONDITION to reads)."""
    other = DEVICE + 8
    with pytest.raises(grpc.RpcError) as info:
        write(rig, (INSERT, flow(art)), device_id=other)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and f"device id {other}" in (info.value.details() or "")
    req = p4runtime_pb2.ReadRequest(device_id=other, entities=[{"table_entry": {}}])
    assert rpc_code(lambda: list(rig.stub.Read(req, timeout=5))) == grpc.StatusCode.NOT_FOUND
    assert rpc_code(lambda: rig.stub.GetForwardingPipelineConfig(GetReq(device_id=other))) == \
        grpc.StatusCode.NOT_FOUND
    setreq = SetReq(device_id=other, action=SetReq.VERIFY, election_id={"low": 1}, config=art.config())
    assert rpc_code(lambda: rig.stub.SetForwardingPipelineConfig(setreq, timeout=10)) == grpc.StatusCode.NOT_FOUND
    write(rig, (INSERT, flow(art)))  # the right device id still writes


def test_undecodable_requests_are_invalid_argument(rig: Rig, art: Artifacts, primary: Stream) -> None:
    """Bytes that are no valid message: INVALID_ARGUMENT naming the message type, on every method."""
    with grpc.insecure_channel(rig.addr) as ch:
        for method, kind in (("Write", "WriteRequest"), ("Capabilities", "CapabilitiesRequest"),
                             ("SetForwardingPipelineConfig", "SetForwardingPipelineConfigRequest")):
            with pytest.raises(grpc.RpcError) as info:
                ch.unary_unary(f"/p4.v1.P4Runtime/{method}")(b"\x0a\xff\xff\xff\x0f", timeout=5)  # claims 4 GB
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert f"p4.v1.{kind}" in (info.value.details() or "")
        read = ch.unary_stream("/p4.v1.P4Runtime/Read")
        assert rpc_code(lambda: list(read(b"\x12\x05\x01", timeout=5))) == grpc.StatusCode.INVALID_ARGUMENT
        stream = ch.stream_stream("/p4.v1.P4Runtime/StreamChannel")
        assert rpc_code(lambda: list(stream(iter([b"\x0a\x80"]), timeout=5))) == grpc.StatusCode.INVALID_ARGUMENT
    write(rig, (INSERT, flow(art)))  # the primary is unaffected


# ---- command line ------------------------------------------------------------------------------------------
def run_cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "softswitch", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.mark.parametrize("args, words", [
    (["--no-p4", "-i", "1veth0"], "<port-number>@"),
    (["--no-p4", "--bogus"], "unrecognized"),
    ([], "--no-p4"),
    (["--no-p4", "--", "--cpu-port", "0"], "1..511"),
    (["--no-p4", "-i", "1@og-no-such-if0", "--", "--cpu-port", "255"], "does not exist"),
    (["flowtable.json"], "BMv2 JSON"),
    (["--no-p4", "--", "--grpc-max-streams", "0"], "at least 1"),
])
def test_cli_bad_arguments_are_one_line(args: list[str], words: str) -> None:
    res = run_cli(*args)
    assert res.returncode in (1, 2)
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and words.lower() in err.lower(), err


def test_cli_busy_port_and_sigterm(rig: Rig) -> None:
    res = run_cli("--no-p4", "--", "--grpc-server-addr", rig.addr)
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1 and "in use" in res.stderr
    addr = free_grpc_addr()
    proc = subprocess.Popen([sys.executable, "-m", "softswitch", "--device-id", "3", "--no-p4", "--log-console",
                             "--log-level", "debug", "--", "--grpc-server-addr", addr, "--cpu-port", "255"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on" in line, line
        channel = grpc.insecure_channel(addr)
        stub = p4runtime_pb2_grpc.P4RuntimeStub(channel)
        assert stub.Capabilities(p4runtime_pb2.CapabilitiesRequest(), timeout=5).p4runtime_api_version
        channel.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
