"""The project's environment: protobuf parses on upb (C), with P4Runtime bindings generated for it.

Every P4Runtime message the controller and softswitch handle goes through these bindings; on the
pure-Python parser a 1,000-update write costs ~65x more, so falling back to it silently is a defect.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_protobuf_runs_on_upb() -> None:
    import p4.v1.p4runtime_pb2  # noqa: F401 - loading the bindings is what fails on an outdated gencode
    from google.protobuf.internal import api_implementation

    assert api_implementation.Type() == "upb", (
        f"protobuf runs on {api_implementation.Type()!r}: rerun scripts/setup.sh and check that "
        "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION is unset")


def test_bindings_are_the_regenerated_ones() -> None:
    """The PyPI p4runtime (protobuf 3 gencode) must not be in .venv beside them: both own p4/."""
    import p4.v1.p4runtime_pb2 as p4runtime_pb2

    assert importlib.metadata.version("offloadgen-p4runtime").startswith("1.4.1+protobuf")
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.version("p4runtime")
    files = importlib.metadata.files("offloadgen-p4runtime") or []
    owned = {str(f.locate()) for f in files}
    assert str(Path(p4runtime_pb2.__file__)) in owned


def test_setup_is_idempotent_for_the_bindings() -> None:
    """A second setup run must not regenerate (nor touch the network) when nothing changed: the installed
    bindings are the ones this protobuf and grpcio-tools would produce."""
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "gen_p4runtime.py"), "--check"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "already installed" in out.stdout


@pytest.mark.p4c
def test_bindings_parse_p4info_from_p4c(tmp_path: Path) -> None:
    """p4c's own P4Info, binary and text, read by the bindings with nothing unknown left over."""
    from google.protobuf import text_format
    from p4.config.v1 import p4info_pb2

    from offloadgen.build import build
    from offloadgen.profile import load_profile

    profile = load_profile(REPO / "profiles" / "default.toml")
    res = build(profile, tmp_path / "build")
    assert res.p4info is not None and res.manifest()["p4info_source"] == "p4c"
    text = p4info_pb2.P4Info()
    text_format.Parse(res.p4info.read_text(), text)  # raises on any field the bindings do not know

    assert res.p4 is not None
    binary_path = tmp_path / "p4info.bin"  # p4c picks the encoding by the suffix
    subprocess.run(["p4c-bm2-ss", "--arch", "v1model", "--p4runtime-files", str(binary_path), "-o",
                    str(tmp_path / "prog.json"), str(res.p4)], check=True, capture_output=True, timeout=300)
    raw = binary_path.read_bytes()
    binary = p4info_pb2.P4Info.FromString(raw)
    assert binary == text
    # text drops fields the bindings do not know, so a shorter re-encoding would mean part of p4c's P4Info
    # was only carried along as unknown bytes
    assert text_format.Parse(text_format.MessageToString(binary), p4info_pb2.P4Info()).ByteSize() == len(raw)

    tables = {t.preamble.name: t for t in binary.tables}
    flow = tables["ingress.flow_v4"]
    assert [m.name for m in flow.match_fields] == ["in_port", "src_addr", "dst_addr", "proto", "src_port",
                                                   "dst_port"]
    assert flow.size == 65536 and flow.idle_timeout_behavior == p4info_pb2.Table.NOTIFY_CONTROL
    actions = {a.preamble.id: a.preamble.name for a in binary.actions}
    assert "ingress.offload" in {actions[r.id] for r in flow.action_refs}
    punt = [c for c in binary.controller_packet_metadata if c.preamble.name == "packet_in"]
    assert punt and {m.name for m in punt[0].metadata} >= {"ingress_port", "reason"}
