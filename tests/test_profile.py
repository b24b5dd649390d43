"""Profile validation: every mistake is reported with its key path and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from offloadgen.profile import ProfileError, load_profile, parse_profile

REPO = Path(__file__).resolve().parent.parent


def base(**over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "t",
        "cpu_port": 255,
        "features": {"ipv4": True, "ipv6": True, "nat": True},
        "ports": [
            {"port": 1, "name": "lan", "mac": "02:00:00:00:00:01"},
            {"port": 2, "name": "wan", "mac": "02:00:00:00:00:02"},
        ],
    }
    data.update(over)
    return data


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ProfileError) as err:
        parse_profile(data, "p.toml")
    assert str(err.value).startswith("p.toml: invalid profile")
    return err.value.problems


@pytest.mark.parametrize("name", ["default", "minimal", "vlan"])
def test_shipped_profiles_load(name: str) -> None:
    prof = load_profile(REPO / "profiles" / f"{name}.toml")
    assert prof.name == name
    assert len(prof.digest) == 64


def test_default_profile_is_what_the_issue_asks_for() -> None:
    prof = load_profile(REPO / "profiles" / "default.toml")
    assert len(prof.ports) == 4 and prof.ipv4 and prof.ipv6 and prof.nat and prof.counters and prof.idle_timeout
    assert prof.ipv4_table_size == prof.ipv6_table_size == 65536
    mini = load_profile(REPO / "profiles" / "minimal.toml")
    assert len(mini.ports) == 2 and mini.ipv4 and not mini.ipv6 and not mini.nat


def test_bad_mac_names_the_port_and_the_fix() -> None:
    data = base()
    data["ports"][1]["mac"] = "zz:00:00:00:00:01"
    assert problems(data) == ["ports[1].mac: 'zz:00:00:00:00:01' is not a MAC address; write it as 02:00:00:00:00:01"]


@pytest.mark.parametrize("cpu", [0, 511])
def test_reserved_cpu_ports_are_rejected(cpu: int) -> None:
    (msg,) = problems(base(cpu_port=cpu))
    assert msg.startswith(f"cpu_port: {cpu} is reserved") and "255 or 510" in msg


def test_duplicate_ports_and_names() -> None:
    data = base()
    data["ports"].append({"port": 1, "name": "lan", "mac": "02:00:00:00:00:03"})
    assert problems(data) == ["ports[2].port: 1 duplicates ports[0]", "ports[2].name: 'lan' duplicates ports[0]"]


def test_port_equal_to_cpu_port() -> None:
    data = base()
    data["ports"][0]["port"] = 255
    assert "ports[0].port: 255 is the CPU port" in problems(data)[0]


@pytest.mark.parametrize("size", [0, -5])
def test_table_sizes_must_be_positive(size: int) -> None:
    (msg,) = problems(base(table_size={"ipv4": size}))
    assert msg.startswith(f"table_size.ipv4: {size} is out of range")


def test_unknown_keys_get_did_you_mean() -> None:
    msgs = problems(base(features={"ipv4": True, "natt": True}, colour="red"))
    assert "colour: unknown key" in msgs[0]
    assert msgs[1] == "features.natt: unknown key; did you mean 'nat'?"


def test_every_problem_is_reported_at_once() -> None:
    data = base(cpu_port=0, features={"ipv4": False, "ipv6": False})
    data["ports"][0]["mtu"] = 20
    data["ports"][1]["vlan"] = 5000
    msgs = problems(data)
    assert len(msgs) == 4
    assert any(m.startswith("ports[0].mtu: 20 is out of range") for m in msgs)
    assert any(m.startswith("ports[1].vlan: 5000 is out of range") for m in msgs)
    assert any(m.startswith("features: at least one of ipv4 and ipv6") for m in msgs)


def test_nat_needs_ipv4() -> None:
    assert problems(base(features={"ipv4": False, "ipv6": True, "nat": True})) == [
        "features.nat: NAT is IPv4 only; enable features.ipv4 or set nat = false"
    ]


def test_not_toml(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(ProfileError, match="not valid TOML"):
        load_profile(bad)


def test_statement_features() -> None:
    """[features] dscp / named_counters: what the switch can apply of the policy's statements."""
    assert problems(base(features={"named_counters": 300})) == [
        "features.named_counters: 300 is out of range; give an integer from 0 to 255"]
    assert problems(base(features={"dscp": "yes"})) == ["features.dscp: 'yes' is not true or false"]
    assert problems(base(features={"dcsp": True})) == ["features.dcsp: unknown key; did you mean 'dscp'?"]
    assert problems(base(features={"vlan_retag": True})) == [
        "features.vlan_retag: retagging needs a tagged port; give a [[ports]] table a vlan or set vlan_retag = false"]
