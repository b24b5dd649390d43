"""The rendered program: golden files for the shipped profiles, and every profile switch visibly changing it.

Refresh the golden files after an intended template change with:
    UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_render.py
and read the diff before committing it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from offloadgen.profile import OPTIONAL_PUNTS, Profile, load_profile
from offloadgen.render import render

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"


@pytest.mark.parametrize("name", ["default", "minimal", "vlan"])
def test_golden(name: str) -> None:
    text = render(load_profile(REPO / "profiles" / f"{name}.toml"))
    golden = GOLDEN / f"{name}.p4"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert golden.exists(), f"{golden} missing; create it with UPDATE_GOLDEN=1"
    assert text == golden.read_text(), f"{name}: rendered program differs from {golden} (see module docstring)"


@pytest.fixture(scope="module")
def default() -> Profile:
    return load_profile(REPO / "profiles" / "default.toml")


def body(text: str) -> str:
    """The program without its comment header (which names the profile hash)."""
    return text.split("*/", 1)[1]


def test_no_ipv6_leaves_no_trace(default: Profile) -> None:
    text = render(dataclasses.replace(default, ipv6=False))
    assert "ipv6" not in body(text) and "flow_v6" not in text and "ETHERTYPE_IPV6" not in text


def test_no_ipv4_leaves_no_trace(default: Profile) -> None:
    text = render(dataclasses.replace(default, ipv4=False, nat=False))
    assert "ipv4" not in body(text) and "flow_v4" not in text and "verify_checksum(hdr" not in text


def test_no_nat_leaves_no_trace(default: Profile) -> None:
    text = render(dataclasses.replace(default, nat=False))
    assert "offload_nat" not in text and "nat_saddr" not in text and "update_checksum_with_payload" not in text


def test_counters_switch(default: Profile) -> None:
    assert "direct_counter" in render(default)
    text = render(dataclasses.replace(default, counters=False, named_counters=0))
    assert "counter" not in body(text).replace("counters;", "")


def test_statements_switch(default: Profile) -> None:
    """[features] dscp / named_counters: the offload_stmt actions carry exactly the enabled parameters, and
    without both there is no trace of them."""
    text = render(default)
    assert "bit<1> set_dscp, bit<6> dscp, bit<8> counter_idx)" in text and "stmt_counter.count(" in text
    assert "counter(17, CounterType.packets_and_bytes) stmt_counter;" in text
    only_dscp = render(dataclasses.replace(default, named_counters=0))
    assert "offload_nat_stmt" in only_dscp and "counter_idx" not in only_dscp and "stmt_counter" not in only_dscp
    only_count = render(dataclasses.replace(default, dscp=False))
    assert "counter_idx" in only_count and "dscp" not in body(only_count)
    none = render(dataclasses.replace(default, dscp=False, named_counters=0))
    assert "_stmt" not in none and "dscp" not in body(none) and "stmt_counter" not in none
    vlan = render(load_profile(REPO / "profiles" / "vlan.toml"))
    assert "dmac, bit<1> set_vid, bit<12> vid)" in vlan and "hdr.vlan.vid = meta.vid;" in vlan
    assert "set_vid" not in render(dataclasses.replace(load_profile(REPO / "profiles" / "vlan.toml"), vlan_retag=False))


def test_idle_timeout_switch(default: Profile) -> None:
    assert render(default).count("support_timeout = true;") == 2
    assert "support_timeout" not in render(dataclasses.replace(default, idle_timeout=False))


def test_table_sizes_from_profile(default: Profile) -> None:
    text = render(dataclasses.replace(default, ipv4_table_size=4, ipv6_table_size=7))
    assert re.search(r"table flow_v4 \{.*?size = 4;", text, re.S)
    assert re.search(r"table flow_v6 \{.*?size = 7;", text, re.S)


def test_cpu_port_from_profile(default: Profile) -> None:
    assert "const bit<9> CPU_PORT = 510;" in render(dataclasses.replace(default, cpu_port=510))


def test_vlan_only_with_vlan_ports() -> None:
    vlan = load_profile(REPO / "profiles" / "vlan.toml")
    text = render(vlan)
    assert "(3, 100) : pop_vlan();" in text and "3 : push_vlan(100);" in text
    # (a profile without tagged ports cannot retag either: the profile check refuses vlan_retag then)
    no_vlan = render(dataclasses.replace(vlan, vlan_retag=False,
                                         ports=tuple(dataclasses.replace(p, vlan=None) for p in vlan.ports)))
    assert "vlan" not in body(no_vlan).lower()


def test_port_mtus_from_profile() -> None:
    text = render(load_profile(REPO / "profiles" / "vlan.toml"))
    assert "2 : set_mtu(1400);" in text and "1 : set_mtu(1500);" in text


@pytest.mark.parametrize("punt", OPTIONAL_PUNTS)
def test_each_punt_switch(default: Profile, punt: str) -> None:
    on = render(default)
    off = render(dataclasses.replace(default, punt=dataclasses.replace(default.punt, **{punt: False})))
    member = punt.upper()
    assert f"punt_reason_t.{member}" in on
    assert f"punt_reason_t.{member}" not in off
    assert f"{member} = " not in off  # the enum lists only reasons the program can report
