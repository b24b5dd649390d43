"""Hostile P4Runtime requests and malformed frames, made from a `random.Random`.

Shared by the fuzz tests (which pass hypothesis' `st.randoms()`, so a failure shrinks and the run is
derandomized) and bench/fuzz_p4runtime.py (a seeded `random.Random`, 10,000 requests, 100,000 frames). The
requests start from valid ones (the entries a controller writes, the reads it makes, the pipeline it pushes)
and are mutated field by field through the message descriptors - public protobuf API only, so the same code runs
on the pure-Python, C++ and upb bindings.
"""

from __future__ import annotations

import random
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from p4.config.v1 import p4info_pb2
from p4.v1 import p4runtime_pb2, p4runtime_pb2_grpc

CATEGORIES = ("write", "read", "set_config", "get_config", "stream", "garbage")
UNARY = {"write": "Write", "read": "Read", "set_config": "SetForwardingPipelineConfig",
         "get_config": "GetForwardingPipelineConfig"}
SERVICE = "/p4.v1.P4Runtime/"

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(1 << 31), (1 << 31) - 1), FieldDescriptor.TYPE_SINT32: (-(1 << 31), (1 << 31) - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(1 << 31), (1 << 31) - 1), FieldDescriptor.TYPE_ENUM: (-(1 << 31), (1 << 31) - 1),
    FieldDescriptor.TYPE_UINT32: (0, (1 << 32) - 1), FieldDescriptor.TYPE_FIXED32: (0, (1 << 32) - 1),
    FieldDescriptor.TYPE_INT64: (-(1 << 63), (1 << 63) - 1), FieldDescriptor.TYPE_SINT64: (-(1 << 63), (1 << 63) - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(1 << 63), (1 << 63) - 1),
    FieldDescriptor.TYPE_UINT64: (0, (1 << 64) - 1), FieldDescriptor.TYPE_FIXED64: (0, (1 << 64) - 1),
}


def _repeated(f: FieldDescriptor) -> bool:
    is_rep = getattr(f, "is_repeated", None)  # protobuf >= 6 spells it so; label is deprecated there
    return bool(is_rep) if is_rep is not None else f.label == FieldDescriptor.LABEL_REPEATED


def _is_map(f: FieldDescriptor) -> bool:
    return f.type == FieldDescriptor.TYPE_MESSAGE and f.message_type.GetOptions().map_entry


def some_int(rng: random.Random, lo: int, hi: int) -> int:
    """Edges more often than the middle: 0, 1, -1, the extremes, small values, ids one off."""
    pick = rng.random()
    if pick < 0.4:
        v = rng.choice((0, 1, 2, -1, lo, hi, hi - 1, 255, 256, 511, 512, 0x01000000, 0x02000001, 0x7FFFFFFF))
    elif pick < 0.7:
        v = rng.randint(0, 1024)
    else:
        v = rng.randint(lo, hi)
    return min(max(v, lo), hi)


def some_bytes(rng: random.Random) -> bytes:
    pick = rng.random()
    if pick < 0.15:
        return b""
    if pick < 0.3:
        return b"\x00" * rng.randint(1, 20)  # zero, zero-padded
    if pick < 0.85:
        return rng.randbytes(rng.randint(1, 20))
    return rng.randbytes(rng.choice((200, 8192, 70_000)))  # over-wide values that end up in error messages


def some_str(rng: random.Random) -> str:
    pick = rng.random()
    if pick < 0.3:
        return ""
    if pick < 0.6:
        return rng.choice(("ingress.flow_v4", "flow_v4", "default", "role", "\u00e9l\u00e8ve", "\x00", "%s%n"))
    return "".join(chr(rng.randint(1, 0x2FF)) for _ in range(rng.choice((5, 40, 3000))))


def _scalar(f: FieldDescriptor, rng: random.Random) -> Any:
    t = f.type
    if t in _INT_RANGES:
        return some_int(rng, *_INT_RANGES[t])
    if t == FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if t == FieldDescriptor.TYPE_BYTES:
        return some_bytes(rng)
    if t == FieldDescriptor.TYPE_STRING:
        return some_str(rng)
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return rng.choice((0.0, -1.0, 1e300 if t == FieldDescriptor.TYPE_DOUBLE else 1e30, float("nan")))
    raise AssertionError(f"unhandled field type {t} of {f.full_name}")


def _size(msg: Message, f: FieldDescriptor) -> int:
    value = getattr(msg, f.name)
    return sum(m.ByteSize() for m in value) if _repeated(f) else int(value.ByteSize())


def mutate(msg: Message, rng: random.Random, steps: int = 3, depth: int = 0) -> None:
    """Change `msg` in place: set, add, duplicate, delete or clear a field somewhere inside it, `steps` times."""
    for _ in range(steps):
        _mutate_one(msg, rng, depth)


def _mutate_one(msg: Message, rng: random.Random, depth: int) -> None:
    fields = [f for f in msg.DESCRIPTOR.fields if not _is_map(f)]
    if not fields:
        return
    # prefer fields already set, and sub-messages over this level's scalars: a mutated device id or election id
    # is refused at the first check, while a mutated match field reaches the validation behind it
    present = [f for f, _ in msg.ListFields() if not _is_map(f)]
    nested = [f for f in present if f.type == FieldDescriptor.TYPE_MESSAGE]
    pick = rng.random()
    if nested and pick < 0.6:  # by size: the updates of a WriteRequest more often than its election id
        f = rng.choices(nested, weights=[1 + _size(msg, f) for f in nested])[0]
    elif present and pick < 0.85:
        f = rng.choice(present)
    else:
        f = rng.choice(fields)
    if f.type == FieldDescriptor.TYPE_MESSAGE:
        if _repeated(f):
            seq = getattr(msg, f.name)
            r = rng.random()
            if len(seq) and r < 0.15:
                del seq[rng.randrange(len(seq))]
                return
            if len(seq) and r < 0.3:
                seq.add().CopyFrom(seq[rng.randrange(len(seq))])
                return
            sub = seq[rng.randrange(len(seq))] if len(seq) and r < 0.85 else seq.add()
        else:
            if msg.HasField(f.name) and rng.random() < 0.15:
                msg.ClearField(f.name)
                return
            sub = getattr(msg, f.name)
            sub.SetInParent()
        if depth < 8:
            _mutate_one(sub, rng, depth + 1)
        return
    if _repeated(f):
        seq = getattr(msg, f.name)
        if len(seq) and rng.random() < 0.3:
            del seq[rng.randrange(len(seq))]
        else:
            seq.append(_scalar(f, rng))
        return
    if f.containing_oneof is None and rng.random() < 0.1:
        msg.ClearField(f.name)
        return
    setattr(msg, f.name, _scalar(f, rng))


def corrupt(data: bytes, rng: random.Random) -> bytes:
    """Bytes that are not a valid message, or are one by accident: flips, cuts, splices, random tails."""
    pick = rng.random()
    if pick < 0.2 or not data:
        return rng.randbytes(rng.choice((0, 1, 5, 64, 1000)))
    b = bytearray(data)
    if pick < 0.5:
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        return bytes(b)
    if pick < 0.7:
        return bytes(b[:rng.randrange(len(b))])
    if pick < 0.85:
        i = rng.randrange(len(b))
        return bytes(b[:i]) + rng.randbytes(rng.randint(1, 32)) + bytes(b[i:])
    # a length-delimited field claiming far more than follows
    return bytes(b) + b"\x0a\xff\xff\xff\xff\x0f" + rng.randbytes(8)


# ---- valid starting points ------------------------------------------------------------------------------------
@dataclass
class Seeds:
    """Valid requests for one pipeline: what the mutations start from."""

    p4info: p4info_pb2.P4Info
    device_config: bytes
    device_id: int
    election: tuple[int, int]
    writes: list[p4runtime_pb2.WriteRequest]
    reads: list[p4runtime_pb2.ReadRequest]

    @classmethod
    def make(cls, p4info: p4info_pb2.P4Info, device_config: bytes, device_id: int,
             election: tuple[int, int]) -> Seeds:
        ids = {name: o.preamble.id for kind in ("tables", "actions", "counters", "direct_counters")
               for o in getattr(p4info, kind) for name in (o.preamble.name, o.preamble.alias)}
        flow_v4 = ids["flow_v4"]

        def entry(sport: int) -> p4runtime_pb2.TableEntry:
            te = p4runtime_pb2.TableEntry(table_id=flow_v4)
            for fid, v in enumerate((1, 0x0A000001, 0x0A000002, 6, sport, 80), start=1):
                te.match.add(field_id=fid).exact.value = _enc(v)
            te.action.action.action_id = ids["offload"]
            for pid, v in enumerate((2, 0x020000000001, 0x020000000002), start=1):
                te.action.action.params.add(param_id=pid, value=_enc(v))
            return te

        def wreq(*updates: tuple[int, p4runtime_pb2.Entity]) -> p4runtime_pb2.WriteRequest:
            req = p4runtime_pb2.WriteRequest(device_id=device_id)
            req.election_id.high, req.election_id.low = election
            for op, ent in updates:
                req.updates.add(type=op).entity.CopyFrom(ent)
            return req

        U = p4runtime_pb2.Update
        E = p4runtime_pb2.Entity
        default = p4runtime_pb2.TableEntry(table_id=flow_v4, is_default_action=True)
        default.action.action.action_id = ids["miss"]
        ttl = entry(7)
        ttl.idle_timeout_ns = 5_000_000_000
        counter = p4runtime_pb2.CounterEntry(counter_id=ids["punt_counter"], index={"index": 1},
                                             data={"packet_count": 1, "byte_count": 64})
        dce = p4runtime_pb2.DirectCounterEntry(table_entry=entry(1), data={"packet_count": 3})
        dce.table_entry.ClearField("action")
        writes = [wreq((U.INSERT, E(table_entry=entry(1))), (U.INSERT, E(table_entry=entry(2)))),
                  wreq((U.MODIFY, E(table_entry=entry(1)))), wreq((U.DELETE, E(table_entry=entry(2)))),
                  wreq((U.INSERT, E(table_entry=ttl))), wreq((U.MODIFY, E(table_entry=default))),
                  wreq((U.MODIFY, E(counter_entry=counter))), wreq((U.MODIFY, E(direct_counter_entry=dce)))]
        match_read = entry(1)
        match_read.ClearField("action")
        match_read.time_since_last_hit.SetInParent()
        reads = [p4runtime_pb2.ReadRequest(device_id=device_id, entities=[E(table_entry={})]),
                 p4runtime_pb2.ReadRequest(device_id=device_id, entities=[E(table_entry={"table_id": flow_v4,
                                                                                          "counter_data": {}})]),
                 p4runtime_pb2.ReadRequest(device_id=device_id, entities=[E(table_entry=match_read)]),
                 p4runtime_pb2.ReadRequest(device_id=device_id, entities=[E(table_entry={"table_id": flow_v4,
                                                                                          "is_default_action": True})]),
                 p4runtime_pb2.ReadRequest(device_id=device_id,
                                           entities=[E(counter_entry={"counter_id": counter.counter_id})]),
                 p4runtime_pb2.ReadRequest(device_id=device_id, entities=[E(direct_counter_entry={
                     "table_entry": {"table_id": flow_v4}})])]
        return cls(p4info, device_config, device_id, election, writes, reads)

    def set_config(self) -> p4runtime_pb2.SetForwardingPipelineConfigRequest:
        req = p4runtime_pb2.SetForwardingPipelineConfigRequest(
            device_id=self.device_id, action=p4runtime_pb2.SetForwardingPipelineConfigRequest.VERIFY)
        req.election_id.high, req.election_id.low = self.election
        req.config.p4info.CopyFrom(self.p4info)
        req.config.p4_device_config = self.device_config
        return req


def _enc(v: int) -> bytes:
    return v.to_bytes(max(1, (v.bit_length() + 7) // 8), "big")


# ---- cases ----------------------------------------------------------------------------------------------------
@dataclass
class Case:
    """One hostile request. `request` is a message for the unary methods, a list of messages for StreamChannel,
    or raw bytes (category garbage) for `method`."""

    category: str
    method: str
    request: Any


def make_case(seeds: Seeds, rng: random.Random, category: str | None = None) -> Case:
    category = category or rng.choices(CATEGORIES, weights=(35, 25, 5, 5, 15, 15))[0]
    maker: Callable[[Seeds, random.Random], Case] = _MAKERS[category]
    return maker(seeds, rng)


def _write(seeds: Seeds, rng: random.Random) -> Case:
    req = p4runtime_pb2.WriteRequest()
    req.CopyFrom(rng.choice(seeds.writes))
    mutate(req, rng, rng.randint(1, 4))
    return Case("write", "Write", req)


def _read(seeds: Seeds, rng: random.Random) -> Case:
    req = p4runtime_pb2.ReadRequest()
    req.CopyFrom(rng.choice(seeds.reads))
    if rng.random() < 0.2:  # an entity kind softswitch does not serve (PI aborts on some of these)
        kind = rng.choice([f.name for f in p4runtime_pb2.Entity.DESCRIPTOR.fields])
        getattr(req.entities.add(), kind).SetInParent()
    mutate(req, rng, rng.randint(1, 3))
    return Case("read", "Read", req)


def _set_config(seeds: Seeds, rng: random.Random) -> Case:
    req = seeds.set_config()
    pick = rng.random()
    if pick < 0.3:  # a damaged program: cut, or bytes flipped
        req.config.p4_device_config = corrupt(seeds.device_config, rng)
    elif pick < 0.8:  # a P4Info that does not describe the program, or describes it oddly
        mutate(req.config.p4info, rng, rng.randint(1, 3))
    else:
        mutate(req, rng, 2)
    req.action = rng.choice((req.action, req.action, 0, 2, 3, 4, 5, 99))
    if req.action in (p4runtime_pb2.SetForwardingPipelineConfigRequest.VERIFY_AND_COMMIT,
                      p4runtime_pb2.SetForwardingPipelineConfigRequest.RECONCILE_AND_COMMIT) \
            and req.config.p4info == seeds.p4info and req.config.p4_device_config == seeds.device_config:
        req.action = p4runtime_pb2.SetForwardingPipelineConfigRequest.VERIFY  # a valid commit would only reset
    return Case("set_config", "SetForwardingPipelineConfig", req)


def _get_config(seeds: Seeds, rng: random.Random) -> Case:
    req = p4runtime_pb2.GetForwardingPipelineConfigRequest(device_id=seeds.device_id)
    mutate(req, rng, rng.randint(1, 2))
    return Case("get_config", "GetForwardingPipelineConfig", req)


def _stream(seeds: Seeds, rng: random.Random) -> Case:
    """A stream: an arbitration (often odd), then packet-outs, digest acks, `other` and more arbitrations."""
    msgs: list[p4runtime_pb2.StreamMessageRequest] = []
    first = p4runtime_pb2.StreamMessageRequest()
    first.arbitration.device_id = seeds.device_id
    first.arbitration.election_id.low = rng.choice((seeds.election[1] + 1, 0, 2**64 - 1, seeds.election[1] + 7))
    if rng.random() < 0.6:
        mutate(first, rng, rng.randint(1, 2))
    if rng.random() < 0.9:
        msgs.append(first)
    for _ in range(rng.randint(0, 6)):
        m = p4runtime_pb2.StreamMessageRequest()
        kind = rng.choice(("packet", "packet", "packet", "arbitration", "digest_ack", "other"))
        if kind == "packet":
            m.packet.payload = frame(rng)
            m.packet.metadata.add(metadata_id=1, value=_enc(rng.choice((1, 2, 4, 255, 511))))
        elif kind == "arbitration":
            m.arbitration.CopyFrom(first.arbitration)
        elif kind == "digest_ack":
            m.digest_ack.digest_id = some_int(rng, 0, (1 << 32) - 1)
        else:
            m.other.CopyFrom(any_pb2.Any(type_url=some_str(rng), value=some_bytes(rng)))
        mutate(m, rng, rng.randint(0, 2))
        msgs.append(m)
    return Case("stream", "StreamChannel", msgs)


def _garbage(seeds: Seeds, rng: random.Random) -> Case:
    method = rng.choice((*UNARY.values(), "Capabilities"))
    valid: bytes
    if method == "Write":
        valid = rng.choice(seeds.writes).SerializeToString()
    elif method == "Read":
        valid = rng.choice(seeds.reads).SerializeToString()
    elif method == "SetForwardingPipelineConfig":
        valid = seeds.set_config().SerializeToString()
    else:
        valid = p4runtime_pb2.GetForwardingPipelineConfigRequest(device_id=seeds.device_id).SerializeToString()
    return Case("garbage", method, corrupt(valid, rng))


@dataclass
class Answer:
    code: str  # grpc.StatusCode name, OK included
    details: str
    seconds: float

    @property
    def handler_failed(self) -> bool:
        """The server raised where it should have refused: gRPC's UNKNOWN, other than a batch's per-update
        errors ("Write failure."), is what an exception escaping a handler becomes."""
        return self.code == "UNKNOWN" and self.details != "Write failure."


def run_case(channel: grpc.Channel, case: Case, timeout: float) -> Answer:
    """Send `case` and wait for the whole answer (a stream: until the server ends it after our half-close)."""
    start = time.monotonic()
    try:
        if case.category == "garbage":
            path = SERVICE + case.method
            if case.method == "Read":
                list(channel.unary_stream(path)(case.request, timeout=timeout))
            else:
                channel.unary_unary(path)(case.request, timeout=timeout)
        else:
            stub = p4runtime_pb2_grpc.P4RuntimeStub(channel)
            if case.method == "StreamChannel":
                for _ in stub.StreamChannel(iter(case.request), timeout=timeout):
                    pass
            elif case.method == "Read":
                list(stub.Read(case.request, timeout=timeout))
            else:
                getattr(stub, case.method)(case.request, timeout=timeout)
        return Answer("OK", "", time.monotonic() - start)
    except grpc.RpcError as exc:
        return Answer(exc.code().name, exc.details() or "", time.monotonic() - start)


_MAKERS: dict[str, Callable[[Seeds, random.Random], Case]] = {
    "write": _write, "read": _read, "set_config": _set_config, "get_config": _get_config, "stream": _stream,
    "garbage": _garbage}


# ---- frames ---------------------------------------------------------------------------------------------------
def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def frame(rng: random.Random, dst_mac: bytes = b"\x02\x00\x00\x00\x01\x01",
          src_mac: bytes = b"\x02\x00\x00\x00\x00\x0a", src: bytes = b"\x0a\x00\x01\x0a",
          dst: bytes = b"\xc0\x00\x02\x14") -> bytes:
    """A frame that is well-formed up to a point and then wrong: every header the program parses (Ethernet,
    802.1Q, IPv4 with options and fragments, IPv6 with extension headers, TCP, UDP, ICMP), then a cut, flipped
    bits, lying length fields, odd EtherTypes, or nothing wrong at all."""
    eth_type = rng.choice((0x0800, 0x0800, 0x0800, 0x86DD, 0x86DD, 0x8100, 0x0806, 0x88CC, 0x0000, 0xFFFF))
    out = bytearray(dst_mac if rng.random() < 0.8 else rng.randbytes(6))
    out += src_mac if rng.random() < 0.8 else rng.choice((b"\xff" * 6, b"\x01\x00\x5e\x00\x00\x01", rng.randbytes(6)))
    if eth_type == 0x8100:
        out += struct.pack("!HH", 0x8100, rng.choice((0, 100, 4095, rng.randrange(65536))))
        eth_type = rng.choice((0x0800, 0x86DD, 0x8100))
    out += struct.pack("!H", eth_type)
    proto = rng.choice((6, 6, 17, 17, 1, 58, 47, 0, 44, 255))
    sport, dport = rng.choice((1234, 0, 65535, rng.randrange(65536))), rng.choice((80, 5001, 0, rng.randrange(65536)))
    if proto == 6:
        flags = rng.choice((0x02, 0x12, 0x10, 0x18, 0x11, 0x04, 0x14, 0x3F, 0x00))
        l4 = struct.pack("!HHIIBBHHH", sport, dport, rng.getrandbits(32), rng.getrandbits(32),
                         rng.choice((0x50, 0x50, 0x00, 0xF0, 0x40)), flags, 65535, 0, 0)
    elif proto == 17:
        l4 = struct.pack("!HHHH", sport, dport, rng.choice((8, 0, 65535, 20)), rng.choice((0, 0xFFFF)))
    else:
        l4 = struct.pack("!BBH", rng.randrange(256), rng.randrange(256), 0) + rng.randbytes(4)
    payload = rng.randbytes(rng.choice((0, 0, 10, 100, 1400, rng.randrange(1500))))
    if eth_type == 0x0800:
        opts = rng.choice((b"", b"", b"\x01\x01\x01\x00", b"\x07" + bytes(39), rng.randbytes(4)))
        ihl = (20 + len(opts)) // 4 if rng.random() < 0.85 else rng.randrange(16)
        total = 20 + len(opts) + len(l4) + len(payload)
        if rng.random() < 0.15:
            total = rng.randrange(65536)
        frag = rng.choice((0, 0, 0, 0x4000, 0x2000, 0x0001, 0x2001))
        ttl = rng.choice((64, 64, 1, 0, 2, 255))
        hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | (ihl & 0xF), 0, total & 0xFFFF, rng.getrandbits(16), frag, ttl,
                          proto, 0, src, dst) + opts
        if rng.random() < 0.9:
            hdr = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:]
        if rng.random() < 0.1:
            hdr = bytes([rng.choice((0x00, 0x60, 0xF5)) | (hdr[0] & 0xF)]) + hdr[1:]  # not version 4
        out += hdr
    elif eth_type == 0x86DD:
        nh = proto if proto != 1 else 58
        ext = b""
        if rng.random() < 0.2:  # a hop-by-hop or fragment header first
            ext = bytes([nh, 0]) + bytes(6)
            nh = rng.choice((0, 44, 60))
        hdr = struct.pack("!IHBB16s16s", 0x60000000, len(ext) + len(l4) + len(payload), nh,
                          rng.choice((64, 1, 0, 255)), b"\x20\x01\x0d\xb8\x00\x01" + bytes(9) + b"\x10",
                          b"\x20\x01\x0d\xb8\x00\x02" + bytes(9) + b"\x20")
        out += hdr + ext
    else:
        out += rng.randbytes(28)
    out += l4 + payload
    pick = rng.random()
    if pick < 0.25:
        out = out[:rng.randrange(len(out) + 1)]  # cut anywhere, down to nothing
    elif pick < 0.45:
        for _ in range(rng.randint(1, 6)):
            i = rng.randrange(len(out))
            out[i] ^= 1 << rng.randrange(8)
    return bytes(out)
