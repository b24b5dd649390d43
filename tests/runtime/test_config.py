"""Router config validation: the shipped example loads; mistakes name the key path and suggest a fix."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from runtime.config import link_local, load_config, parse_config
from runtime.errors import ConfigError
from runtime.routing import RoutingTable

BASE = """
[[ports]]
port = 1
name = "lan1"
mac = "02:00:00:00:01:01"
ipv4 = "10.0.1.1/24"
ipv6 = "2001:db8:1::1/64"

[[ports]]
port = 4
name = "wan"
mac = "02:00:00:00:01:04"
ipv4 = ["192.0.2.1/24"]
"""


def test_shipped_example(router_config_path: Path) -> None:
    cfg = load_config(router_config_path)
    assert sorted(cfg.ports) == [1, 2, 3, 4]
    assert cfg.port_names["wan"] == 4 and cfg.ports[4].mac == bytes.fromhex("020000000104")
    assert str(cfg.ports[1].primary(4)) == "10.0.1.1/24" and str(cfg.ports[4].primary(6)) == "2001:db8:2::1/64"
    assert cfg.snat[0].masquerade and cfg.snat[0].out_port == 4
    assert ipaddress.IPv6Interface(f"{link_local(cfg.ports[1].mac)}/64") in cfg.ports[1].ipv6


@pytest.mark.parametrize(("text", "message"), [
    (BASE + "[[port]]\n", r"<t>: port: unknown key; did you mean 'ports'\?"),
    (BASE.replace("name = \"wan\"", "nmae = \"wan\""), r"ports\[1\]\.nmae: unknown key; did you mean 'name'\?"),
    (BASE.replace("10.0.1.1/24", "10.0.1.300/24"), r"ports\[0\]\.ipv4: bad address '10.0.1.300/24'"),
    (BASE.replace("10.0.1.1/24", "10.0.1.1"), r"ports\[0\]\.ipv4: expected an address with prefix length"),
    (BASE.replace('"2001:db8:1::1/64"', '"10.9.9.9/24"'), r"ports\[0\]\.ipv6: 10.9.9.9/24 is not an IPv6 address"),
    (BASE.replace("port = 4", "port = 1"), r"ports\[1\]\.port: port 1 is configured twice"),
    (BASE.replace("02:00:00:00:01:04", "03:00:00:00:01:04"), r"ports\[1\]\.mac: .* is a multicast MAC"),
    (BASE.replace("192.0.2.1/24", "10.0.1.2/24"), r"ports\[1\]: subnet 10.0.1.0/24 is also on port 1"),
    (BASE + '[[nat.masquerade]]\nout = "wam"\n', r"nat\.masquerade\[0\]\.out: unknown port 'wam'; did you mean 'wan'\?"),
    (BASE + '[[nat.masquerade]]\nout = 7\n', r"port 7 is not configured"),
    (BASE + '[[nat.dnat]]\nproto = "sctp"\ndport = 1\nto = "10.0.1.5"\n', r"nat\.dnat\[0\]\.proto: expected \"tcp\" or \"udp\""),
    (BASE + '[[nat.dnat]]\nproto = "tcp"\ndport = "90-80"\nto = "10.0.1.5"\n', r"nat\.dnat\[0\]\.dport: .*low <= high"),
    (BASE + '[[routes]]\ndst = "0.0.0.0/0"\n', r"routes\[0\]: give 'via'"),
    (BASE + '[[routes]]\ndst = "10.0.0.1/8"\nvia = "192.0.2.254"\n', r"routes\[0\]\.dst: bad prefix"),
    (BASE + '[[routes]]\ndst = "::/0"\nvia = "192.0.2.254"\n', r"not of the same address family"),
    ("ports = 3", r"ports: expected an array of tables"),
    ("[[ports]]\nport = 1\n", r"ports\[0\]: missing 'mac'"),
    ("x = [", r"not valid TOML"),
])
def test_errors_name_the_place(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(text, "<t>")


def test_flowtable_section_kept_for_the_policy() -> None:
    cfg = parse_config(BASE + "[flowtable]\ntcp_timeout = 10\n")
    assert cfg.flowtable_raw == {"tcp_timeout": 10}


def test_routing_longest_prefix() -> None:
    cfg = parse_config(BASE + '[[routes]]\ndst = "0.0.0.0/0"\nvia = "192.0.2.254"\n'
                       '[[routes]]\ndst = "10.0.0.0/8"\nvia = "10.0.1.254"\n'
                       '[[routes]]\ndst = "198.51.100.0/24"\nport = "wan"\n')
    rt = RoutingTable.from_config(cfg)

    def look(a: str) -> tuple[int, str | None]:
        r = rt.lookup(ipaddress.ip_address(a))
        assert r is not None
        return r.port, str(r.gateway) if r.gateway else None

    assert look("10.0.1.77") == (1, None)  # connected beats 10/8
    assert look("10.7.7.7") == (1, "10.0.1.254")
    assert look("8.8.8.8") == (4, "192.0.2.254")
    assert look("198.51.100.9") == (4, None)
    assert rt.lookup(ipaddress.ip_address("2001:db8:9::1")) is None
    assert rt.is_local(ipaddress.ip_address("192.0.2.1").packed)
    with pytest.raises(ConfigError, match="not on any port's subnet"):
        RoutingTable.from_config(parse_config(BASE + '[[routes]]\ndst = "0.0.0.0/0"\nvia = "172.16.0.1"\n'))
