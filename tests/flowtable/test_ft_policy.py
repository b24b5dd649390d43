"""The [flowtable] section: defaults, first-match rules, and errors that name the key path."""

from __future__ import annotations

import ipaddress
import tomllib

import pytest

from runtime.flowtable.policy import FlowKey, FlowtableConfig, PolicyError, parse_flowtable


def key(proto: int = 6, src: str = "10.0.0.1", dst: str = "8.8.8.8", sport: int = 40000, dport: int = 80,
        iif: int = 1, oif: int = 4) -> FlowKey:
    return FlowKey(proto, ipaddress.ip_address(src), ipaddress.ip_address(dst), sport, dport, iif, oif)


def test_defaults() -> None:
    cfg = parse_flowtable(None)
    assert cfg == FlowtableConfig()
    assert cfg.tcp_timeout_s == 30 and cfg.udp_timeout_s == 30 and cfg.hw_offload
    assert cfg.timeout_ns(6) == 30_000_000_000
    assert cfg.decide(key()) and cfg.decide(key(proto=17))
    assert not cfg.decide(key(proto=1)), "only TCP and UDP are ever offloaded"


def test_full_section_first_match_wins() -> None:
    raw = tomllib.loads("""
[flowtable]
ports = [1, "lan2", 4]
tcp_timeout = 60
udp_timeout = 15.5
hw_offload = false
default = "skip"

[[flowtable.rules]]
action = "skip"
proto = "udp"
dport = 53

[[flowtable.rules]]
action = "offload"
src = ["10.0.0.0/8", "2001:db8::/32"]
dport = ["80", "8000-8080", 443]
iif = [1, "lan2"]
oif = "wan"
""")
    cfg = parse_flowtable(raw["flowtable"], port_names={"lan1": 1, "lan2": 2, "wan": 4}, switch_ports=[1, 2, 3, 4])
    assert cfg.ports == frozenset({1, 2, 4})
    assert cfg.tcp_timeout_s == 60 and cfg.udp_timeout_s == 15.5 and not cfg.hw_offload
    assert not cfg.default_offload and len(cfg.rules) == 2
    assert cfg.decide(key(dport=8080))
    assert cfg.decide(key(iif=2, dport=443))
    assert not cfg.decide(key(proto=17, dport=53)), "first rule skips DNS"
    assert not cfg.decide(key(dport=22)), "no rule matches: default skip"
    assert not cfg.decide(key(src="192.168.1.1")), "src prefix"
    assert not cfg.decide(key(iif=3)), "port 3 is not covered by the flowtable"
    assert not cfg.decide(key(oif=2, iif=1)), "oif must be wan"
    assert cfg.decide(key(src="2001:db8::1", dst="2001:db8:1::1"))
    assert cfg.rules[0].describe() == "proto udp dport 53 skip"


@pytest.mark.parametrize(("raw", "path", "text"), [
    ({"tcp_timout": 5}, "flowtable.tcp_timout", "did you mean 'tcp_timeout'"),
    ({"tcp_timeout": "30s"}, "flowtable.tcp_timeout", "number of seconds"),
    ({"udp_timeout": 0}, "flowtable.udp_timeout", "between 1 and"),
    ({"hw_offload": "yes"}, "flowtable.hw_offload", "true or false"),
    ({"default": "drop"}, "flowtable.default", '"offload" or "skip"'),
    ({"ports": [1, 9]}, "flowtable.ports[1]", "not a switch port"),
    ({"ports": ["lan9"]}, "flowtable.ports[0]", "did you mean 'lan1'"),
    ({"rules": {"action": "skip"}}, "flowtable.rules", "array of tables"),
    ({"rules": [{"proto": "tcp"}]}, "flowtable.rules[0].action", "missing"),
    ({"rules": [{"action": "skip"}, {"action": "offload", "proto": "icmp"}]}, "flowtable.rules[1].proto", '"tcp" or "udp"'),
    ({"rules": [{"action": "skip", "src": "10.0.0.1/8"}]}, "flowtable.rules[0].src", "bad prefix"),
    ({"rules": [{"action": "skip", "dport": "90-80"}]}, "flowtable.rules[0].dport", "empty"),
    ({"rules": [{"action": "skip", "sport": [1, 70000]}]}, "flowtable.rules[0].sport[1]", "0-65535"),
    ({"rules": [{"action": "skip", "dprt": 1}]}, "flowtable.rules[0].dprt", "did you mean 'dport'"),
    ({"rules": [{"action": "skip", "src": "10.0.0.0/8", "dst": "2001:db8::/32"}]}, "flowtable.rules[0]", "families"),
    ({"rules": [{"action": "skip", "oif": True}]}, "flowtable.rules[0].oif", "port number"),
    ({"rules": [{"action": "offload", "set": {"dscp": "cs9"}}]}, "flowtable.rules[0].set.dscp", "unknown DSCP 'cs9'; did you mean"),
    ({"rules": [{"action": "offload", "set": {"dscp": 64}}]}, "flowtable.rules[0].set.dscp", "0-63"),
    ({"rules": [{"action": "offload", "set": {"dcsp": "cs3"}}]}, "flowtable.rules[0].set.dcsp", "did you mean 'dscp'"),
    ({"rules": [{"action": "offload", "set": "cs3"}]}, "flowtable.rules[0].set", "dscp = "),
    ({"rules": [{"action": "offload", "set": {"vlan": 4095}}]}, "flowtable.rules[0].set.vlan", "VLAN id 1-4094"),
    ({"rules": [{"action": "offload", "counter": "9lives"}]}, "flowtable.rules[0].counter", "counter name"),
    ({"rules": [{"action": "offload", "countr": "web"}]}, "flowtable.rules[0].countr", "did you mean 'counter'"),
])
def test_errors_name_the_key_path(raw: dict[str, object], path: str, text: str) -> None:
    with pytest.raises(PolicyError) as err:
        parse_flowtable(raw, port_names={"lan1": 1, "wan": 4}, switch_ports=[1, 2, 3, 4])
    assert err.value.path == path
    assert str(err.value).startswith(path + ":")
    assert text in str(err.value)


def test_statements_of_the_first_matching_rule() -> None:
    """``set``/``counter`` become the connection's statements; the rule that decides offload gives them, for
    a skipped connection too (the slow path applies them)."""
    from runtime.actions import Count, SetDscp, SetVlan

    raw = tomllib.loads("""
[flowtable]
[[flowtable.rules]]
action = "offload"
proto = "tcp"
dport = 80
set = { dscp = "cs3" }
counter = "web"

[[flowtable.rules]]
action = "skip"
proto = "udp"
set = { dscp = 46, vlan = 200 }
""")
    cfg = parse_flowtable(raw["flowtable"])
    assert cfg.statements(key(dport=80)) == (SetDscp(24), Count("web"))
    assert cfg.decide(key(dport=80))
    assert cfg.statements(key(proto=17)) == (SetDscp(46), SetVlan(200)) and not cfg.decide(key(proto=17))
    assert cfg.statements(key(dport=443)) == ()
    assert cfg.counter_names == ("web",)
    assert cfg.rules[0].describe() == "proto tcp dport 80 dscp=cs3 counter=web offload"
    assert str(SetDscp(46)) == "dscp=ef" and str(SetDscp(5)) == "dscp=5"
