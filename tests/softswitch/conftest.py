"""Shared helpers of the softswitch front-end/engine tests: the programs offloadgen generates (shipped
profiles and variants toggling each feature and each punt exception) and a small driver around Dataplane."""

from __future__ import annotations

import copy
import ipaddress
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from offloadgen.profile import OPTIONAL_PUNTS, Profile, parse_profile
from offloadgen.render import render
from softswitch.dataplane import Dataplane, FieldMatch, TableEntry
from softswitch.frontend import Program, load_program

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ("default", "minimal", "vlan")


def _shipped(name: str) -> dict[str, Any]:
    return tomllib.loads((REPO / "profiles" / f"{name}.toml").read_text())


def variant_dicts() -> dict[str, dict[str, Any]]:
    """Profile data by variant name: the shipped profiles, and the default one with each feature and each
    optional punt switched off in turn (plus an IPv6-only and a VLAN-with-IPv6 variant)."""
    out = {n: _shipped(n) for n in SHIPPED}
    base = _shipped("default")
    for feat in ("nat", "counters", "idle_timeout", "dscp", "named_counters", "ipv6", "ipv4"):
        d = copy.deepcopy(base)
        d["features"][feat] = 0 if feat == "named_counters" else False
        if feat == "ipv4":
            d["features"]["nat"] = False
            d["table_size"].pop("ipv4", None)
        if feat == "ipv6":
            d["table_size"].pop("ipv6", None)
        out[f"default-no-{feat}"] = d
    for punt in OPTIONAL_PUNTS:
        d = copy.deepcopy(base)
        d.setdefault("punt", {})[punt] = False
        out[f"default-no-punt-{punt}"] = d
    v = _shipped("vlan")
    v["features"]["ipv6"] = True
    v["features"]["idle_timeout"] = True
    v["table_size"]["ipv6"] = 128
    out["vlan-ipv6"] = v
    return out


VARIANTS = tuple(variant_dicts())


@cache
def profile_of(name: str) -> Profile:
    return parse_profile(variant_dicts()[name], name)


@cache
def source_of(name: str) -> str:
    return render(profile_of(name))


@cache
def program_of(name: str) -> Program:
    return load_program(source_of(name), "flowtable.p4")


def ip(a: str) -> int:
    return int(ipaddress.ip_address(a))


def mac(a: str) -> int:
    return int(a.replace(":", ""), 16)


@dataclass
class Switch:
    """A Dataplane plus name lookups, the way a controller would drive it."""

    name: str
    profile: Profile
    program: Program
    dp: Dataplane

    def id(self, kind: str, name: str) -> int:
        for obj in getattr(self.program.p4info, kind):
            if obj.preamble.name == name or obj.preamble.alias == name:
                return int(obj.preamble.id)
        raise KeyError(f"{kind} {name}")

    def reason(self, name: str) -> int:
        enum = self.program.p4info.type_info.serializable_enums["punt_reason_t"]
        for m in enum.members:
            if m.name == name.upper():
                return int.from_bytes(m.value, "big")
        raise KeyError(name)

    def flow_match(self, family: str, in_port: int, src: str, dst: str, proto: int, sport: int,
                   dport: int) -> dict[int, FieldMatch]:
        vals = [in_port, ip(src), ip(dst), proto, sport, dport]
        return {i: FieldMatch(v) for i, v in enumerate(vals, start=1)}

    def add_flow(self, family: str, in_port: int, src: str, dst: str, proto: int, sport: int, dport: int,
                 out_port: int, smac: str, dmac: str, nat: tuple[str, str, int, int] | None = None,
                 idle_timeout_ns: int = 0) -> TableEntry:
        table = self.id("tables", f"ingress.flow_{'v4' if family == 'ipv4' else 'v6'}")
        params = {1: out_port, 2: mac(smac), 3: mac(dmac)}
        action = self.id("actions", "ingress.offload")
        if nat is not None:
            action = self.id("actions", "ingress.offload_nat")
            params.update({4: ip(nat[0]), 5: ip(nat[1]), 6: nat[2], 7: nat[3]})
        e = TableEntry(table, self.flow_match(family, in_port, src, dst, proto, sport, dport), action, params,
                       idle_timeout_ns=idle_timeout_ns)
        self.dp.insert(e)
        return e


def make_switch(name: str) -> Switch:
    prof = profile_of(name)
    prog = program_of(name)
    return Switch(name, prof, prog, Dataplane(prog, prof.cpu_port))


@pytest.fixture
def switch_factory() -> Any:
    return make_switch
