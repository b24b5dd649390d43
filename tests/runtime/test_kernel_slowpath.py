"""The kernel slow path's set-up on its own: the router namespace it builds from the config, and the clear
errors users get for what it cannot build (no switch is needed: the kernel side comes up first)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.config import RouterConfig, load_config, parse_config
from runtime.errors import ConfigError
from runtime.kernel.netns import KernelError, NetNs
from runtime.kernel.nft import check_statements, load_ruleset, read_counters, render_ruleset
from runtime.kernel.slowpath import KernelOptions, KernelSlowPath
from runtime.offloader import load_policy

pytestmark = [pytest.mark.root]


@pytest.fixture
def netns_name() -> Iterator[str]:
    import secrets

    name = f"ogkt{secrets.token_hex(3)}"
    yield name
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def open_kernel(config_text: str, netns: str, ruleset: str | None = None) -> KernelSlowPath:
    cfg = parse_config(config_text, "router.toml")
    return KernelSlowPath(cfg, KernelOptions(netns=netns, nft_ruleset=ruleset), lambda port, frame: None,
                          default_name=netns).open()


def test_ports_become_taps_with_the_configs_addresses_routes_and_nat(router_config_path: Path, netns_name: str) -> None:
    text = router_config_path.read_text() + '\n[[routes]]\ndst = "198.51.100.0/24"\nvia = "192.0.2.254"\n'
    text = text.replace('[flowtable]', '[[nat.dnat]]\nin = "wan"\nproto = "tcp"\ndport = 8080\nto = "10.0.1.10"\n'
                        'to_port = 80\n\n[flowtable]')
    k = open_kernel(text, netns_name)
    try:
        ns = NetNs(netns_name)
        links = {x["ifname"]: x for x in json.loads(ns.ip("-j", "-d", "link", "show").stdout)}
        cfg = load_config(router_config_path)
        for p in cfg.ports.values():
            link = links[p.name]
            assert link["address"] == ":".join(f"{b:02x}" for b in p.mac) and link["mtu"] == p.mtu
            assert link["linkinfo"]["info_kind"] == "tun"
            addrs = {f"{a['local']}/{a['prefixlen']}" for a in
                     json.loads(ns.ip("-j", "addr", "show", "dev", p.name).stdout)[0]["addr_info"]}
            assert {str(a) for a in p.all_addresses() if not a.ip.is_link_local} <= addrs
        route = json.loads(ns.ip("-j", "route", "get", "198.51.100.7").stdout)[0]
        assert route["gateway"] == "192.0.2.254" and route["dev"] == "wan"
        rules = ns.run(["nft", "list", "table", "inet", "offloadgen"]).stdout
        assert 'oifname "wan" ip saddr 10.0.0.0/8 masquerade' in rules
        assert 'iifname "wan"' in rules and "tcp dport 8080 dnat ip to 10.0.1.10:80" in rules
        assert ns.read_sysctl("net.ipv4.ip_forward") == "1"
    finally:
        k.close(keep=False)
    # an existing namespace named by --netns is kept; our TAPs and table are gone
    ns = NetNs(netns_name)
    assert "lan1" not in ns.ip("link", "show").stdout
    assert ns.run(["nft", "list", "table", "inet", "offloadgen"], check=False).returncode != 0


def test_a_port_name_that_exists_in_the_namespace_is_an_error(router_config_path: Path, netns_name: str) -> None:
    subprocess.run(["ip", "netns", "add", netns_name], check=True)
    subprocess.run(["ip", "-n", netns_name, "link", "add", "lan1", "type", "veth", "peer", "name", "other"], check=True)
    with pytest.raises(KernelError, match=r"port 'lan1': an interface of that name already exists in namespace"):
        open_kernel(router_config_path.read_text(), netns_name)
    # left as it was: the user's interface is untouched
    assert "lan1" in NetNs(netns_name).ip("link", "show", "lan1").stdout


def test_a_ruleset_nft_rejects_shows_nfts_message(router_config_path: Path, netns_name: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.nft"
    bad.write_text("table inet mine {\n\tchain c {\n\t\ttype filter hook forward priority 0;\n\t\tfrobnicate\n\t}\n}\n")
    with pytest.raises(KernelError) as err:
        open_kernel(router_config_path.read_text(), netns_name, ruleset=str(bad))
    msg = str(err.value)
    assert str(bad) in msg and "nft rejected it" in msg and "frobnicate" in msg, msg


def test_a_route_the_kernel_refuses_names_the_route(router_config_path: Path, netns_name: str) -> None:
    text = router_config_path.read_text() + '\n[[routes]]\ndst = "198.51.100.0/24"\nvia = "203.0.113.1"\n'
    with pytest.raises(KernelError, match=r"router.toml: routes\[0\] \(198.51.100.0/24 via 203.0.113.1\)"):
        open_kernel(text, netns_name)


def test_cli_reports_kernel_errors_and_misplaced_options(router_config_path: Path, build_dir: Path, tmp_path: Path,
                                                         netns_name: str) -> None:
    bad = tmp_path / "bad.nft"
    bad.write_text("this is not nft\n")
    run = [sys.executable, "-m", "offloadgen.cli", "run", "--config", str(router_config_path), "--build",
           str(build_dir), "--status-socket", str(tmp_path / "s.sock"), "--switch", "127.0.0.1:1"]
    out = subprocess.run([*run, "--nft-ruleset", str(bad)], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2 and "--nft-ruleset belongs to the kernel slow path" in out.stderr, out.stderr
    # the shipped config's policy marks and counts TCP to 5002: offloadgen cannot put that into a user's ruleset
    out = subprocess.run([*run, "--slowpath", "kernel", "--netns", netns_name, "--nft-ruleset", str(bad)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2, out.stderr
    assert (f"router.toml: flowtable.rules[1]: the statements (dscp=cs3 counter=bulk) cannot be applied with "
            f"--nft-ruleset {bad}: offloadgen does not rewrite your ruleset") in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    # without statements in the policy, the kernel side comes up before the switch is contacted: its error
    # is the one reported
    plain = tmp_path / "router.toml"
    plain.write_text(router_config_path.read_text().replace('set = { dscp = "cs3" }\n', "")
                     .replace('counter = "bulk"\n', ""))
    run[run.index(str(router_config_path))] = str(plain)
    out = subprocess.run([*run, "--slowpath", "kernel", "--netns", netns_name, "--nft-ruleset", str(bad)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2, out.stderr
    assert f"offloadgen run: {bad}: nft rejected it:" in out.stderr and "syntax error" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_render_masquerade_snat_dnat() -> None:
    cfg = parse_config("""
[[ports]]
port = 1
name = "lan1"
mac = "02:00:00:00:01:01"
ipv4 = "10.0.1.1/24"
[[ports]]
port = 4
name = "wan"
mac = "02:00:00:00:01:04"
ipv4 = "192.0.2.1/24"
ipv6 = "2001:db8:2::1/64"
[[nat.snat]]
out = "wan"
to = "192.0.2.9"
ports = "2000-2999"
src = "10.0.1.0/24"
[[nat.masquerade]]
out = "wan"
[[nat.dnat]]
proto = "udp"
dport = 53
to = "10.0.1.10"
""")
    text = render_ruleset(cfg)
    assert 'oifname "wan" ip saddr { 10.0.1.0/24 } meta l4proto { tcp, udp } snat ip to 192.0.2.9:2000-2999' in text
    assert 'oifname "wan" meta nfproto ipv4 masquerade' in text and 'oifname "wan" meta nfproto ipv6 masquerade' in text
    assert "meta nfproto ipv4 fib daddr type local udp dport 53 dnat ip to 10.0.1.10" in text


def test_no_switch_leaves_no_namespace_behind(router_config_path: Path, build_dir: Path, tmp_path: Path) -> None:
    """The kernel side comes up first; when the switch then cannot be reached, it is taken down again."""
    from offloadgen.switchproc import free_grpc_addr
    from runtime.kernel.netns import netns_exists
    from runtime.kernel.slowpath import default_netns

    addr = free_grpc_addr()  # nothing listens there
    out = subprocess.run([sys.executable, "-m", "offloadgen.cli", "run", "--config", str(router_config_path),
                          "--build", str(build_dir), "--status-socket", str(tmp_path / "s.sock"), "--switch", addr,
                          "--connect-timeout", "1", "--slowpath", "kernel"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode != 0
    assert not netns_exists(default_netns(addr, 1)), "the router namespace was left behind"


STMT_POLICY = """
[flowtable]
[[flowtable.rules]]
action = "skip"
proto = "tcp"
dport = 5001

[[flowtable.rules]]
action = "offload"
proto = "tcp"
src = ["10.0.0.0/8", "2001:db8:1::/48"]
dport = [5002, "6000-6010"]
iif = "lan1"
oif = "wan"
set = { dscp = "cs3" }
counter = "web"

[[flowtable.rules]]
action = "skip"
dst = "2001:db8:2::/48"
set = { dscp = 46 }

[[flowtable.rules]]
action = "offload"
proto = "udp"
"""


def stmt_config(router_config_path: Path, policy: str = STMT_POLICY) -> RouterConfig:
    text = router_config_path.read_text()
    return parse_config(text[:text.index("\n[flowtable]")] + "\n" + policy, "router.toml")


def test_policy_statements_become_a_statements_chain(router_config_path: Path, netns_name: str) -> None:
    """Every policy rule up to the last with statements, in order, each ending in return (the first match
    decides, also a rule without statements); matched on the conntrack entry's original tuple, with iif/oif
    mirrored for the reply direction; one protocol per rule so that nft types the port match."""
    cfg = stmt_config(router_config_path)
    policy = load_policy(cfg)
    text = render_ruleset(cfg, policy)
    chain = text[text.index("\tchain statements {"):]
    rules = [line.strip() for line in chain[:chain.index("\t}")].splitlines()[1:]]
    mark = 'ip dscp set cs3 counter name "web" return'
    mark6 = 'ip6 dscp set cs3 counter name "web" return'
    assert rules == [
        "meta nfproto ipv4 meta l4proto tcp ct original proto-dst 5001 return",
        "meta nfproto ipv6 meta l4proto tcp ct original proto-dst 5001 return",
        *(f'meta nfproto ipv4 meta l4proto tcp ct direction {d} iifname "{i}" oifname "{o}" '
          f"ct original ip saddr 10.0.0.0/8 ct original proto-dst {p} {mark}"
          for d, i, o in (("original", "lan1", "wan"), ("reply", "wan", "lan1")) for p in ("5002", "6000-6010")),
        *(f'meta nfproto ipv6 meta l4proto tcp ct direction {d} iifname "{i}" oifname "{o}" '
          f"ct original ip6 saddr 2001:db8:1::/48 ct original proto-dst {p} {mark6}"
          for d, i, o in (("original", "lan1", "wan"), ("reply", "wan", "lan1")) for p in ("5002", "6000-6010")),
        "meta nfproto ipv6 ct original ip6 daddr 2001:db8:2::/48 ip6 dscp set ef return",
    ], rules  # the last rule has no statements and comes after the last that has: not in the chain
    assert "\tcounter web { }\n" in text and "\t\tjump statements\n" in text
    # and the kernel takes it
    ns = NetNs(netns_name)
    ns.ensure()
    load_ruleset(ns, cfg, None, policy)
    listed = ns.run(["nft", "list", "table", "inet", "offloadgen"]).stdout
    assert "counter web {" in listed and 'ct original proto-dst 6000-6010 ip dscp set cs3 counter name "web"' in listed
    assert read_counters(ns) == {"web": (0, 0)}


def test_kernel_refuses_statements_it_cannot_apply(router_config_path: Path) -> None:
    cfg = stmt_config(router_config_path)
    with pytest.raises(ConfigError, match=r"router.toml: flowtable.rules\[1\]: the statements \(dscp=cs3 counter=web\) "
                       r"cannot be applied with --nft-ruleset my.nft: .* remove set/counter from the rule"):
        check_statements(cfg, load_policy(cfg), user_ruleset="my.nft")
    check_statements(cfg, load_policy(cfg), user_ruleset=None)
    retag = stmt_config(router_config_path, '[flowtable]\n[[flowtable.rules]]\naction = "offload"\nset = { vlan = 200 }\n')
    with pytest.raises(ConfigError, match=r"router.toml: flowtable.rules\[0\]: set.vlan \(VLAN retag\) is not available "
                       r"with --slowpath kernel"):
        check_statements(retag, load_policy(retag), user_ruleset=None)
