"""softswitch's P4Info equals p4c's (p4c-bm2-ss --p4runtime-files) for every program offloadgen generates:
the shipped profiles and variants toggling each feature and each punt exception."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import VARIANTS, program_of, source_of
from google.protobuf import text_format
from p4.config.v1 import p4info_pb2

from softswitch.p4info import aliases, assign_ids, jenkins_one_at_a_time


def _p4c_p4info(tmp_path: Path, source: str) -> p4info_pb2.P4Info:
    prog = tmp_path / "flowtable.p4"
    prog.write_text(source)
    out = tmp_path / "p4info.txtpb"
    subprocess.run(["p4c-bm2-ss", "--arch", "v1model", "--p4runtime-files", str(out), "-o",
                    str(tmp_path / "out.json"), str(prog)], check=True, capture_output=True, timeout=120)
    return text_format.Parse(out.read_text(), p4info_pb2.P4Info())


@pytest.mark.p4c
@pytest.mark.parametrize("variant", VARIANTS)
def test_p4info_equals_p4c(tmp_path: Path, variant: str) -> None:
    ours = program_of(variant).p4info
    ref = _p4c_p4info(tmp_path, source_of(variant))
    # Field by field first, so that a failure names the object that differs.
    for kind in ("tables", "actions", "counters", "direct_counters", "controller_packet_metadata"):
        a = {o.preamble.name: o for o in getattr(ours, kind)}
        b = {o.preamble.name: o for o in getattr(ref, kind)}
        assert sorted(a) == sorted(b), kind
        for name in a:
            assert a[name] == b[name], f"{kind} {name}:\nours:\n{a[name]}\np4c:\n{b[name]}"
    assert ours.type_info == ref.type_info
    assert ours.pkg_info == ref.pkg_info
    assert ours == ref  # including order


def test_jenkins_hash_and_ids() -> None:
    # Values from p4c's output for the default profile.
    ids = assign_ids({0x02: ["ingress.flow_v4"], 0x01: ["NoAction", "ingress.miss"], 0x04: ["packet_in_h"]})
    assert ids[(0x02, "ingress.flow_v4")] == 40834622
    assert ids[(0x01, "NoAction")] == 21257015
    assert ids[(0x01, "ingress.miss")] == 21559264
    assert ids[(0x04, "packet_in_h")] == 68340960
    assert jenkins_one_at_a_time("") == 0


def test_linear_probing_on_collision() -> None:
    # Two names forced onto the same id: the second (in sorted order) takes the next hash value.
    h = jenkins_one_at_a_time("a.x")
    ids = assign_ids({0x01: ["a.x"]})
    assert ids[(0x01, "a.x")] == (1 << 24) | (h & 0xFFFFFF)


def test_aliases_are_shortest_unique_suffixes() -> None:
    al = aliases(["ingress.t", "egress.t", "ingress.u", "NoAction"])
    assert al == {"ingress.t": "ingress.t", "egress.t": "egress.t", "ingress.u": "u", "NoAction": "NoAction"}
