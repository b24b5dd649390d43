"""The front end parses every generated program and rejects anything outside its subset with
file:line:column and the construct's name - never a traceback."""

from __future__ import annotations

import pytest
from conftest import VARIANTS, program_of, source_of

from softswitch.frontend import P4FrontendError, load_program


@pytest.mark.parametrize("variant", VARIANTS)
def test_generated_programs_load(variant: str) -> None:
    prog = program_of(variant)
    assert prog.p4info.tables and prog.source == source_of(variant)


BASE = source_of("minimal")


def _error(source: str) -> P4FrontendError:
    with pytest.raises(P4FrontendError) as ei:
        load_program(source, "prog.p4")
    return ei.value


def _insert_in_ingress(decl: str) -> str:
    marker = "control ingress(inout headers_t hdr, inout metadata_t meta,\n                inout standard_metadata_t standard_metadata) {\n"
    assert marker in BASE
    return BASE.replace(marker, marker + decl + "\n")


def _line_of(source: str, needle: str) -> int:
    return source[: source.index(needle)].count("\n") + 1


@pytest.mark.parametrize(("decl", "name"), [
    ("    register<bit<32>>(16) regs;", "register"),
    ("    meter(16, MeterType.packets) m;", "meter"),
    ("    direct_meter<bit<2>>(MeterType.packets) dm;", "direct_meter"),
    ("    action_profile(4) ap;", "action_profile"),
    ("    widget(1) w;", "widget"),
])
def test_unsupported_externs_are_named(decl: str, name: str) -> None:
    src = _insert_in_ingress(decl)
    e = _error(src)
    assert e.filename == "prog.p4" and e.line == _line_of(src, decl.strip()) and e.column > 0
    assert name in e.message
    assert str(e).startswith(f"prog.p4:{e.line}:{e.column}: ")


@pytest.mark.parametrize(("snippet", "name"), [
    ("header_union u_t { ethernet_h a; }", "header_union"),
    ("header v_t { varbit<32> opts; }", "varbit"),
    ("struct s_t { ethernet_h[4] stack; }", "header stack"),
    ("extern Foo { Foo(); void bar(); }", "extern declaration 'Foo'"),
    ("const bit<8> X = true ? 1 : 2;", "?:"),
    ("const int<8> Y = 1;", "int<N>"),
])
def test_unsupported_declarations_are_named(snippet: str, name: str) -> None:
    src = BASE.replace("typedef bit<48> mac_addr_t;", "typedef bit<48> mac_addr_t;\n" + snippet)
    e = _error(src)
    assert name in e.message, e.message
    assert e.line == _line_of(src, snippet)


def test_unsupported_statement_in_apply() -> None:
    src = BASE.replace("        if (hdr.packet_out.isValid()) {",
                       "        clone(CloneType.I2E, 5);\n        if (hdr.packet_out.isValid()) {", 1)
    e = _error(src)
    assert "clone" in e.message and e.line == _line_of(src, "clone(")


def test_syntax_error_has_position() -> None:
    src = BASE.replace("typedef bit<48> mac_addr_t;", "typedef bit<48 mac_addr_t;")
    e = _error(src)
    assert e.message.startswith("syntax error") and e.line == _line_of(src, "typedef bit<48 mac")
    assert "mac_addr_t" in e.message


def test_type_errors() -> None:
    src = BASE.replace("meta.l4_src_port = hdr.tcp.src_port;", "meta.l4_src_port = hdr.ipv4.src_addr;")
    e = _error(src)
    assert "type mismatch" in e.message and e.line == _line_of(src, "meta.l4_src_port = hdr.ipv4.src_addr")
    e = _error(BASE.replace("hdr.ipv4.ttl = hdr.ipv4.ttl - 1;", "hdr.ipv4.tll = hdr.ipv4.ttl - 1;"))
    assert "no field 'tll'" in e.message
    e = _error(BASE.replace("#include <v1model.p4>", "#include <psa.p4>"))
    assert "psa.p4" in e.message and e.line == _line_of(BASE, "#include <v1model.p4>")
    e = _error(BASE.replace("#include <core.p4>", "#define FOO 1"))
    assert "#define" in e.message


def test_garbage_is_a_clear_error() -> None:
    for junk in ("", "control c() { garbage", "\x00\x01", "{{{{", "V1Switch() main;"):
        with pytest.raises(P4FrontendError):
            load_program(junk)


def test_extras_enum_exit_return_directional_actions_ternary_lpm() -> None:
    """Constructs beyond the templates that the subset supports, executed."""
    src = """
#include <core.p4>
#include <v1model.p4>
header h_t { bit<8> a; bit<8> b; bit<16> c; }
struct hs { h_t h; }
struct m_t { bit<8> x; }
parser P(packet_in pkt, out hs hdr, inout m_t meta, inout standard_metadata_t sm) {
    state start { pkt.extract(hdr.h); transition select(hdr.h.a) { 0x10 &&& 0xf0: accept; 1: reject; default: accept; } }
}
control VC(inout hs hdr, inout m_t meta) { apply { } }
control I(inout hs hdr, inout m_t meta, inout standard_metadata_t sm) {
    action twice(inout bit<8> v) { v = v + v; }
    action set(bit<9> port) { sm.egress_spec = port; }
    action stop() { sm.egress_spec = 7; exit; }
    table tern { key = { hdr.h.a: ternary; hdr.h.c: lpm; } actions = { set; stop; NoAction; }
                 const default_action = NoAction(); }
    apply {
        twice(hdr.h.b);
        hdr.h.c = hdr.h.c[7:0] ++ hdr.h.c[15:8];
        switch (tern.apply().action_run) {
            set: { hdr.h.a = 1; }
            default: { return; }
        }
        hdr.h.b = (bit<8>) ((bit<16>) hdr.h.b << 4);
    }
}
control E(inout hs hdr, inout m_t meta, inout standard_metadata_t sm) { apply { } }
control CC(inout hs hdr, inout m_t meta) { apply { } }
control D(packet_out pkt, in hs hdr) { apply { pkt.emit(hdr); } }
V1Switch(P(), VC(), I(), E(), CC(), D()) main;
"""
    from softswitch.dataplane import Dataplane, FieldMatch, TableEntry

    prog = load_program(src, "x.p4")
    dp = Dataplane(prog, 255)
    t = prog.p4info.tables[0]
    aid = {a.preamble.name: a.preamble.id for a in prog.p4info.actions}
    dp.insert(TableEntry(t.preamble.id, {1: FieldMatch(0x20, mask=0xF0), 2: FieldMatch(0x3400, prefix_len=8)},
                         aid["I.set"], {1: 3}, priority=10))
    dp.insert(TableEntry(t.preamble.id, {1: FieldMatch(0x22, mask=0xFF)}, aid["I.stop"], {}, priority=20))
    # c = 0x0034 -> swapped 0x3400 (lpm /8 hit); a = 0x21 matches 0x20/0xf0: set(3), then a = 1, b = (2*b) << 4.
    assert dp.process(0, bytes([0x21, 0x03, 0x00, 0x34])) == [(3, bytes([0x01, 0x60, 0x34, 0x00]))]
    # a = 0x22: stop (priority 20) exits: port 7, nothing after the table ran.
    assert dp.process(0, bytes([0x22, 0x01, 0x00, 0x34])) == [(7, bytes([0x22, 0x02, 0x34, 0x00]))]
    # miss: default NoAction, return: egress_spec stays 0.
    assert dp.process(0, bytes([0x99, 0x01, 0x12, 0x34])) == [(0, bytes([0x99, 0x02, 0x34, 0x12]))]


def test_truncate_cuts_the_frame_as_it_leaves() -> None:
    """v1model truncate as BMv2 1.15 does it (measured with simple_switch): the deparsed frame, headers added
    in egress included, leaves cut to the length, whether ingress or egress called it; longer limits and no
    call leave the frame whole."""
    src = """
#include <core.p4>
#include <v1model.p4>
header eth_h { bit<48> d; bit<48> s; bit<16> t; }
header tag_h { bit<32> v; }
struct hs { eth_h eth; tag_h tag; }
struct m_t { bit<1> x; }
parser P(packet_in pkt, out hs hdr, inout m_t meta, inout standard_metadata_t sm) {
    state start { pkt.extract(hdr.eth); transition accept; }
}
control VC(inout hs hdr, inout m_t meta) { apply { } }
control I(inout hs hdr, inout m_t meta, inout standard_metadata_t sm) {
    apply { sm.egress_spec = 2; if (hdr.eth.t == 1) { truncate(20); } }
}
control E(inout hs hdr, inout m_t meta, inout standard_metadata_t sm) {
    apply {
        hdr.tag.setValid();
        hdr.tag.v = 0xdeadbeef;
        if (hdr.eth.t == 2) { truncate((bit<32>) hdr.eth.t + 18); }
        if (hdr.eth.t == 3) { truncate(1000); }
    }
}
control CC(inout hs hdr, inout m_t meta) { apply { } }
control D(packet_out pkt, in hs hdr) { apply { pkt.emit(hdr.eth); pkt.emit(hdr.tag); } }
V1Switch(P(), VC(), I(), E(), CC(), D()) main;
"""
    from softswitch.dataplane import Dataplane

    dp = Dataplane(load_program(src, "t.p4"), 255)
    macs = bytes.fromhex("020000000001020000000002")
    payload = bytes(range(46))
    for etype, length in ((1, 20), (2, 20), (3, 64), (4, 64)):
        [(port, frame)] = dp.process(1, macs + etype.to_bytes(2, "big") + payload)
        assert port == 2 and frame == (macs + etype.to_bytes(2, "big") + bytes.fromhex("deadbeef") + payload)[:length]
    with pytest.raises(P4FrontendError, match="truncate is only supported in ingress and egress"):
        load_program(src.replace("control VC(inout hs hdr, inout m_t meta) { apply { } }",
                                 "control VC(inout hs hdr, inout m_t meta) { apply { truncate(4); } }"), "t.p4")
