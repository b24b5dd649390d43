"""The P4Runtime client against a real switch: pipeline push and cookie, batched writes with per-update errors,
reads with counters, arbitration, packet-in with decoded reason, reconnection after a switch restart."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from p4.v1 import p4runtime_pb2

from offloadgen.netlab import Netlab
from offloadgen.switchproc import SwitchProcess, SwitchSpec, free_grpc_addr
from runtime.client import StreamHandlers, SwitchClient
from runtime.entities import PacketIn, TableEntry
from runtime.errors import P4RuntimeError
from runtime.flowtable.model import FlowTuple
from runtime.flowtable.offload import entry_key, flow_key
from runtime.flowtable.p4map import caps_from_p4info
from runtime.flowtable.p4rt import P4RuntimeReader
from runtime.pipeline import Pipeline, load_build

pytestmark = [pytest.mark.root]
KINDS = ["softswitch", pytest.param("bmv2", marks=pytest.mark.bmv2)]


def entry(port: int, sport: int = 1000) -> TableEntry:
    return TableEntry("flow_v4", {"in_port": port, "src_addr": "10.0.1.10", "dst_addr": "192.0.2.20", "proto": 6,
                                  "src_port": sport, "dst_port": 80},
                      "offload", {"port": 4, "smac": "02:00:00:00:01:04", "dmac": "02:00:00:00:00:20"})


@pytest.fixture(params=KINDS)
def switch(request: pytest.FixtureRequest, build_dir: Path) -> Iterator[tuple[SwitchProcess, Pipeline]]:
    pipeline = load_build(build_dir, request.param)
    with SwitchProcess(SwitchSpec(kind=request.param, grpc_addr=free_grpc_addr())) as sw:
        yield sw, pipeline


def test_pipeline_writes_reads_and_errors(switch: tuple[SwitchProcess, Pipeline]) -> None:
    sw, pipeline = switch
    with SwitchClient(sw.grpc_addr) as c:
        assert c.primary
        assert c.set_pipeline(pipeline) is True
        assert c.set_pipeline(pipeline) is False  # cookie matches: skipped
        assert c.get_cookie() == pipeline.cookie
        c.insert([entry(1), entry(2)])
        with pytest.raises(P4RuntimeError) as info:
            c.insert([entry(3), entry(1), entry(2, sport=5)])
        err = info.value
        assert [(e.index, e.code) for e in err.errors] == [(1, "ALREADY_EXISTS")]
        assert "update 1 (INSERT table_entry" in str(err) and err.is_only("ALREADY_EXISTS")
        with pytest.raises(P4RuntimeError) as info:
            c.delete([entry(9)])
        assert info.value.codes == {"NOT_FOUND"}
        got = c.read_table("flow_v4", counters=True)
        assert sorted(e.match["in_port"] for e in got) == [1, 2, 2, 3]
        assert all(e.counter is not None and e.counter.packets == 0 for e in got)
        c.delete(got)
        assert c.read_table("flow_v4") == []
        # a second controller with a lower election id is a backup and may not write
        backup = SwitchClient(sw.grpc_addr, election_id=(0, 0), p4info=pipeline.p4info)
        with pytest.raises(P4RuntimeError, match="another controller is primary"):
            backup.connect()
    # a new controller process finds the pipeline there and does not push it again
    with SwitchClient(sw.grpc_addr) as c2:
        assert c2.set_pipeline(pipeline) is False


def test_every_update_of_a_large_failed_write_gets_its_own_status(switch: tuple[SwitchProcess, Pipeline]) -> None:
    """1,000 deletes of entries that are not there, in one Write: the answer carries 1,000 statuses (~40 KB of
    trailer, over gRPC's default 8 KB metadata limit). The client must get each update's NOT_FOUND, not a
    RESOURCE_EXHAUSTED for the whole batch, whose outcome would then be unknown."""
    sw, pipeline = switch
    with SwitchClient(sw.grpc_addr, p4info=pipeline.p4info) as c:
        c.set_pipeline(pipeline)
        c.insert([entry(1, 7)])
        with pytest.raises(P4RuntimeError) as info:
            c.delete([entry(1, 7)] + [entry(2, sport) for sport in range(999)])
        assert info.value.codes == {"NOT_FOUND"}
        assert [e.index for e in info.value.errors] == list(range(1, 1000))
        assert c.read_table("flow_v4") == []


def test_bulk_counter_read_matches_decoded_entries(switch: tuple[SwitchProcess, Pipeline]) -> None:
    """The flowtable's stats-period read keys the switch's answer without decoding whole entries: its keys and
    counters must be what decoding them in full gives, and each flow's own key must find its entry."""
    sw, pipeline = switch
    caps = caps_from_p4info(pipeline.p4info.message)
    with SwitchClient(sw.grpc_addr, p4info=pipeline.p4info) as c:
        c.set_pipeline(pipeline)
        c.insert([dataclasses.replace(entry(port, sport), idle_timeout_ns=10 * 10**9)
                  for port in (1, 2) for sport in (0, 1, 80, 65535)])
        reader, tables = P4RuntimeReader(c, caps), sorted(set(caps.tables.values()))
        got = reader.read_tables(tables)
        again = reader.read_tables(tables)  # keys from the map the first read left
        c.delete([entry(2, 80)])
        after_delete = reader.read_tables(tables)
        decoded = c.read_table("flow_v4", counters=True)
    want = {entry_key(e.table, e.match): (e.counter.packets if e.counter else 0, e.counter.bytes if e.counter else 0)
            for e in decoded}
    assert len(want) == 7
    assert {k: (v.packets, v.bytes) for k, v in after_delete.items()} == want
    assert len(got) == 8 and got.keys() == again.keys() and want.keys() < got.keys()
    assert all((got[k].packets, got[k].bytes) == (again[k].packets, again[k].bytes) for k in got)
    # time_since_last_hit is asked for on a table with idle timeouts and taken when the switch gives it
    assert all(v.since_last_hit_ns is None or v.since_last_hit_ns >= 0 for v in got.values())
    for port in (1, 2):
        t = FlowTuple(port, bytes([10, 0, 1, 10]), bytes([192, 0, 2, 20]), 6, 80, 80)
        assert flow_key(t, caps) in got


@pytest.mark.parametrize("kind", KINDS)
def test_packet_in_and_reconnect(kind: str, build_dir: Path) -> None:
    pipeline = load_build(build_dir, kind)
    got: list[PacketIn] = []
    connected: list[bool] = []
    event = threading.Event()

    def on_pin(p: PacketIn) -> None:
        got.append(p)
        event.set()

    with Netlab() as lab:
        a, b = lab.veth(f"ogc{lab.tag}a", f"ogc{lab.tag}b")
        addr = free_grpc_addr()
        spec = SwitchSpec(kind=kind, ports={1: a}, grpc_addr=addr)
        sw = SwitchProcess(spec).start()
        client = SwitchClient(addr, p4info=pipeline.p4info, backoff=(0.05, 0.5),
                              handlers=StreamHandlers(on_packet_in=on_pin, on_connected=connected.append))
        try:
            client.connect()
            client.set_pipeline(pipeline)
            with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
                s.bind((b, 0))
                frame = bytes.fromhex("020000000101" "020000000010" "0806") + b"\0" * 46
                s.send(frame)
                assert event.wait(5), "no packet-in"
            reasons = pipeline.p4info.serializable_enum("punt_reason_t")
            assert got[0].metadata["ingress_port"] == 1 and reasons[got[0].metadata["reason"]] == "NON_IP"
            assert got[0].payload[:14] == frame[:14]
            # the switch restarts: the client reconnects by itself and arbitrates again
            sw.kill()
            sw = SwitchProcess(spec).start()
            deadline = time.monotonic() + 15
            while client.connect_count < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert client.connect_count >= 2 and client.primary and connected[-1] is True
            assert client.set_pipeline(pipeline) is True  # a fresh switch has no pipeline
            # Again, with unary calls failing during the outage (their channel then backs off before it
            # tries again): the pipeline push made as soon as the stream is back must still go through.
            sw.kill()
            end = time.monotonic() + 2
            while time.monotonic() < end:
                with contextlib.suppress(P4RuntimeError):
                    client.read_table("flow_v4")  # fails at once: the switch is gone
                time.sleep(0.05)
            sw = SwitchProcess(spec).start()
            deadline = time.monotonic() + 15
            while client.connect_count < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert client.connect_count >= 3 and client.primary
            assert client.set_pipeline(pipeline) is True
        finally:
            client.close()
            sw.stop()


def test_stream_outbox_delivers_every_message_in_order_across_threads() -> None:
    """Packet-outs are queued from the worker thread and sent from the stream's event loop, which is woken
    only when it sleeps: bursts, single messages and pauses from several threads must all arrive, each
    thread's in order, and the end marker must end the stream."""
    import asyncio
    import random

    from runtime.client import _Outbox

    got: list[tuple[int, int]] = []
    started = threading.Event()

    async def consume(outbox: _Outbox) -> None:
        started.set()
        async for msg in outbox.messages():
            got.append((msg.arbitration.device_id, msg.arbitration.election_id.low))

    loop = asyncio.new_event_loop()
    outbox = _Outbox(loop)
    runner = threading.Thread(target=lambda: loop.run_until_complete(consume(outbox)))
    runner.start()
    started.wait(5)

    def produce(tid: int) -> None:
        rnd = random.Random(tid)
        for i in range(5000):
            msg = p4runtime_pb2.StreamMessageRequest()
            msg.arbitration.device_id = tid
            msg.arbitration.election_id.low = i
            outbox.put(msg)
            if rnd.random() < 0.01:
                time.sleep(rnd.random() / 1000)  # let the loop drain and go to sleep now and then

    producers = [threading.Thread(target=produce, args=(tid,)) for tid in (1, 2, 3)]
    for p in producers:
        p.start()
    for p in producers:
        p.join()
    outbox.put(None)
    runner.join(10)
    loop.close()
    assert not runner.is_alive()
    assert len(got) == 15000
    for tid in (1, 2, 3):
        assert [i for t, i in got if t == tid] == list(range(5000))
