"""The P4Info wrapper and the entity encoders, against the generated program's P4Info."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.entities import TableEntry, encode, encode_packet_out, mac_to_bytes, padded
from runtime.errors import ConfigError, EncodeError, P4InfoLookupError
from runtime.p4info import P4Info
from runtime.pipeline import load_build, make_cookie


@pytest.fixture(scope="module")
def p4info(build_dir: Path) -> P4Info:
    return P4Info.load(build_dir / "p4info.txtpb")


def test_lookup_by_name_alias_suffix_and_id(p4info: P4Info) -> None:
    t = p4info.table("ingress.flow_v4")
    assert p4info.table("flow_v4") is t
    assert p4info.table(t.id) is t
    assert [f.name for f in t.match_fields] == ["in_port", "src_addr", "dst_addr", "proto", "src_port", "dst_port"]
    assert t.match_field("src_addr").bitwidth == 32 and t.idle_timeout and t.direct_counter_id
    a = p4info.action("offload_nat")
    assert a.name == "ingress.offload_nat" and a.param("saddr").bitwidth == 32
    assert p4info.action("ingress.miss").id in t.default_only_action_ids


def test_did_you_mean(p4info: P4Info) -> None:
    with pytest.raises(P4InfoLookupError, match=r"no table named 'flow_v5'; did you mean .*'flow_v4'"):
        p4info.table("flow_v5")
    with pytest.raises(P4InfoLookupError, match="did you mean 'offload'"):
        p4info.action("ofload")
    with pytest.raises(P4InfoLookupError, match="no table with id 7"):
        p4info.table(7)
    with pytest.raises(P4InfoLookupError, match="did you mean 'smac'"):
        p4info.action("offload").param("smack")


def test_serializable_enum_and_packet_metadata(p4info: P4Info) -> None:
    reasons = p4info.serializable_enum("punt_reason_t")
    assert reasons[1] == "MISS" and reasons[3] == "TTL" and reasons[7] == "TCP_FIN_RST"
    assert [(m.name, m.bitwidth) for m in p4info.packet_metadata("packet_in")] == [
        ("ingress_port", 9), ("reason", 8), ("_pad", 7)]
    with pytest.raises(P4InfoLookupError, match="did you mean 'packet_out'"):
        p4info.packet_metadata("packet_ot")


def test_encode_canonical() -> None:
    assert encode(0, 9) == b"\x00"
    assert encode(255, 9) == b"\xff" and encode(256, 9) == b"\x01\x00"
    assert encode("02:00:00:00:01:01", 48) == b"\x02\x00\x00\x00\x01\x01"
    assert encode("00:00:00:00:00:01", 48) == b"\x01"  # no leading zero bytes
    assert encode("10.0.1.10", 32) == bytes([10, 0, 1, 10])
    assert encode("0.0.0.1", 32) == b"\x01"
    assert encode("2001:db8::1", 128) == bytes.fromhex("20010db8000000000000000000000001")
    assert encode(b"\x00\x00\x05", 16) == b"\x05"
    assert padded(b"\x05", 16) == b"\x00\x05"
    with pytest.raises(EncodeError, match="does not fit in 9 bits"):
        encode(512, 9, "port")
    with pytest.raises(EncodeError, match="bad MAC"):
        mac_to_bytes("02:00:00")
    with pytest.raises(EncodeError, match="not a number, MAC or IP"):
        encode("nonsense", 32)


def test_table_entry_roundtrip(p4info: P4Info) -> None:
    e = TableEntry("flow_v4", {"in_port": 1, "src_addr": "10.0.1.10", "dst_addr": "192.0.2.20", "proto": 6,
                               "src_port": 40000, "dst_port": 80},
                   "offload_nat", {"port": 4, "smac": "02:00:00:00:01:04", "dmac": "02:00:00:00:00:20",
                                   "saddr": "192.0.2.1", "daddr": "192.0.2.20", "sport": 40000, "dport": 80},
                   idle_timeout_ns=5_000_000_000)
    msg = e.encode(p4info)
    assert msg.table_id == p4info.table("flow_v4").id and msg.idle_timeout_ns == 5_000_000_000
    back = TableEntry.decode(msg, p4info)
    assert back.table == "ingress.flow_v4" and back.action == "ingress.offload_nat"
    assert back.match["src_addr"] == 0x0A00010A and back.params["smac"] == 0x020000000104
    assert back.key(p4info) == e.key(p4info)


def test_table_entry_errors(p4info: P4Info) -> None:
    with pytest.raises(EncodeError, match="missing parameter 'dmac'"):
        TableEntry("flow_v4", {}, "offload", {"port": 1, "smac": 1}).encode(p4info)
    with pytest.raises(EncodeError, match="unknown parameter"):
        TableEntry("flow_v4", {}, "offload", {"port": 1, "smac": 1, "dmac": 2, "vlan": 3}).encode(p4info)
    with pytest.raises(EncodeError, match=r"has no action ingress\.set_mtu"):
        TableEntry("flow_v4", {}, "set_mtu", {"mtu": 1}).encode(p4info)
    with pytest.raises(EncodeError, match="in_port"):
        TableEntry("flow_v4", {"in_port": 1000}).encode(p4info)


def test_packet_out_sends_every_field(p4info: P4Info) -> None:
    msg = encode_packet_out(b"frame", {"egress_port": 4}, p4info)
    assert [(m.metadata_id, m.value) for m in msg.metadata] == [(1, b"\x04"), (2, b"\x00")]
    with pytest.raises(EncodeError, match="no metadata bogus"):
        encode_packet_out(b"", {"bogus": 1}, p4info)


def test_load_build(build_dir: Path, tmp_path: Path) -> None:
    soft = load_build(build_dir, "softswitch")
    assert soft.device_config.startswith(b"/*") and soft.cpu_port == 255
    assert soft.cookie == make_cookie(soft.p4info.message, soft.device_config)
    if (build_dir / "flowtable.json").exists():
        bmv2 = load_build(build_dir, "bmv2")
        assert bmv2.device_config.lstrip().startswith(b"{") and bmv2.cookie != soft.cookie
    with pytest.raises(ConfigError, match="run `offloadgen build"):
        load_build(tmp_path, "bmv2")
    with pytest.raises(ConfigError, match="unknown target"):
        load_build(build_dir, "tofino")  # type: ignore[arg-type]
