"""softswitch against mutated and garbage P4Runtime requests, and malformed frames, with a primary attached.

Each request category gets a fixed budget of hypothesis examples (derandomized: the same cases every run, and a
failure shrinks to a small request). The properties: every request is answered (no hang), no handler fails
with an exception (every refusal is a deliberate status), and afterwards the primary still writes, reads and
receives packet-ins. bench/fuzz_p4runtime.py runs the same generators at 10,000 requests / 100,000 frames and
against BMv2, whose P4Runtime server (PI) aborts on some of them.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from fuzzcases import CATEGORIES, Seeds, frame, make_case, run_case
from google.protobuf import text_format
from google.rpc import code_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from p4.config.v1 import p4info_pb2
from p4.v1 import p4runtime_pb2, p4runtime_pb2_grpc
from test_server import Sink, Stream, tcp_frame

from offloadgen.build import build
from offloadgen.profile import load_profile
from offloadgen.switchproc import free_grpc_addr
from softswitch.p4runtime.schema import MAX_MESSAGE, SHOWN_BYTES, P4RuntimeError, decode_uint
from softswitch.server import P4RuntimeServer, SoftSwitch, serve

REPO = Path(__file__).resolve().parents[2]
DEVICE = 1
ELECTION = (0, 1)
BUDGET = {"write": 800, "read": 600, "set_config": 120, "get_config": 150, "stream": 300, "garbage": 600}
FRAMES = 2000
ANSWER_TIMEOUT = 60.0  # a hang, not a speed limit: answers over 5 s are counted by the bench script


def _settings(n: int) -> settings:
    return settings(max_examples=n, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


@dataclasses.dataclass
class Fuzz:
    sw: SoftSwitch
    server: P4RuntimeServer
    channel: grpc.Channel
    stub: p4runtime_pb2_grpc.P4RuntimeStub
    primary: Stream
    seeds: Seeds
    sinks: dict[int, Sink]

    def assert_serves_primary(self) -> None:
        """The primary can still do its job: write, read back, delete, and receive a packet-in."""
        assert self.stub.Capabilities(p4runtime_pb2.CapabilitiesRequest(), timeout=30).p4runtime_api_version
        # a fuzzed VERIFY_AND_COMMIT may have replaced the pipeline with an equivalent one: start clean
        push(self.stub, self.seeds, p4runtime_pb2.SetForwardingPipelineConfigRequest.VERIFY_AND_COMMIT)
        insert = self.seeds.writes[0]
        self.stub.Write(insert, timeout=30)
        got = [e for r in self.stub.Read(self.seeds.reads[0], timeout=30) for e in r.entities
               if e.table_entry.table_id == insert.updates[0].entity.table_entry.table_id]
        assert len(got) == 2
        probe = tcp_frame(sport=4321)
        self.sw.receive(1, probe)  # a miss (no entry for this flow): to the CPU
        # packet-ins of the fuzzed frames may still be on their way; the probe's comes after them
        while self.primary.get("packet", timeout=30).packet.payload != probe:
            pass


def push(stub: p4runtime_pb2_grpc.P4RuntimeStub, seeds: Seeds, action: int) -> None:
    req = seeds.set_config()
    req.action = action
    stub.SetForwardingPipelineConfig(req, timeout=60)


@pytest.fixture(scope="module")
def fz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzz]:
    res = build(load_profile(REPO / "profiles" / "default.toml"), tmp_path_factory.mktemp("fuzz"), use_p4c=False)
    assert res.p4info is not None
    info = p4info_pb2.P4Info()
    text_format.Parse(res.p4info.read_text(), info)
    seeds = Seeds.make(info, res.p4.read_bytes(), DEVICE, ELECTION)
    sw = SoftSwitch(DEVICE, 255)
    sinks = {n: Sink() for n in (1, 2, 3, 4)}
    for n, s in sinks.items():
        sw.add_port(n, s)
    addr = free_grpc_addr()
    server = serve(sw, addr)
    channel = grpc.insecure_channel(addr)
    stub = p4runtime_pb2_grpc.P4RuntimeStub(channel)
    primary = Stream(stub)
    try:
        assert primary.arbitrate(ELECTION, DEVICE).arbitration.status.code == code_pb2.OK
        push(stub, seeds, p4runtime_pb2.SetForwardingPipelineConfigRequest.VERIFY_AND_COMMIT)
        yield Fuzz(sw, server, channel, stub, primary, seeds, sinks)
    finally:
        primary.close()
        channel.close()
        server.stop(0).wait(5)
        sw.stop()


@pytest.mark.parametrize("category", CATEGORIES)
def test_fuzzed_requests_are_answered_and_refused_cleanly(fz: Fuzz, category: str) -> None:
    codes: dict[str, int] = {}

    @_settings(BUDGET[category])
    @given(rnd=st.randoms(use_true_random=False))
    def one(rnd: random.Random) -> None:
        case = make_case(fz.seeds, rnd, category)
        answer = run_case(fz.channel, case, ANSWER_TIMEOUT)
        codes[answer.code] = codes.get(answer.code, 0) + 1
        assert answer.code != "DEADLINE_EXCEEDED", f"no answer to {case.method} within {ANSWER_TIMEOUT} s"
        assert not answer.handler_failed, f"{case.method} failed in the server: {answer.details}"

    one()
    # the generators reach past the first check: not everything is refused the same way
    assert len(codes) >= 2, codes
    fz.assert_serves_primary()


def test_fuzzed_frames_never_break_the_dataplane(fz: Fuzz) -> None:
    """Malformed frames on a port: none takes the dataplane down (no exception out of receive), hits still
    forward and misses still reach the primary."""
    push(fz.stub, fz.seeds, p4runtime_pb2.SetForwardingPipelineConfigRequest.VERIFY_AND_COMMIT)
    fz.stub.Write(fz.seeds.writes[0], timeout=30)  # some frames hit

    @_settings(FRAMES)
    @given(rnd=st.randoms(use_true_random=False))
    def one(rnd: random.Random) -> None:
        fz.sw.receive(rnd.choice((1, 2, 4)), frame(rnd))

    one()
    fz.assert_serves_primary()


@_settings(500)
@given(data=st.binary(max_size=20_000), bitwidth=st.integers(1, 128), strict=st.booleans())
def test_byte_string_errors_are_bounded(data: bytes, bitwidth: int, strict: bool) -> None:
    """Whatever a client sends as a value, decode_uint either returns it or refuses it with a message of at
    most MAX_MESSAGE characters that quotes at most SHOWN_BYTES of it."""
    try:
        value = decode_uint(data, bitwidth, "ingress.flow_v4: match field src_addr", strict)
    except P4RuntimeError as exc:
        assert len(exc.message) <= MAX_MESSAGE
        assert exc.message.count("0x") <= 2
        longest_hex = max((len(w) for w in exc.message.replace(",", " ").split() if w.startswith("0x")), default=0)
        assert longest_hex <= 2 + 2 * SHOWN_BYTES + 3
    else:
        assert value == int.from_bytes(data, "big") and value < 1 << bitwidth
