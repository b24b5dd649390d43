"""Network namespaces and veth pairs for tests, `offloadgen ptf` and the no-Mininet paths.

Every object created is recorded and removed in reverse order on exit, also after a failure, so a run leaves
no stray namespaces or interfaces. Offloads (checksum, TSO/GSO/GRO) are switched off on both ends of every
veth: a switch reading frames with AF_PACKET must see real, wire-sized frames with complete checksums.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from types import TracebackType

OFFLOADS = ("rx", "tx", "tso", "gso", "gro", "lro", "sg")


class NetlabError(RuntimeError):
    pass


def sh(*argv: str, check: bool = True, ns: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    full = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
    proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise NetlabError(f"{' '.join(full)}: exit {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def disable_offloads(iface: str, ns: str | None = None) -> None:
    if shutil.which("ethtool") is None:
        raise NetlabError("ethtool not found; install it (apt-get install ethtool) to switch veth offloads off")
    for feature in OFFLOADS:
        sh("ethtool", "-K", iface, feature, "off", check=False, ns=ns)


@dataclass
class Host:
    """A host in its own namespace, attached by a veth pair to a switch-side interface in the root namespace."""

    name: str
    ns: str
    iface: str  # inside the namespace
    switch_iface: str  # root namespace end, given to the switch as -i N@switch_iface
    mac: str
    ipv4: str | None = None  # CIDR
    ipv6: str | None = None
    vlan: int | None = None  # the host's frames carry this 802.1Q tag on the wire

    @property
    def ip4(self) -> str:
        assert self.ipv4, f"{self.name} has no IPv4 address"
        return self.ipv4.split("/")[0]

    @property
    def ip6(self) -> str:
        assert self.ipv6, f"{self.name} has no IPv6 address"
        return self.ipv6.split("/")[0]

    def run(self, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return sh(*argv, check=check, ns=self.ns, timeout=timeout)

    def popen(self, *argv: str, stdout: int | None = None, stderr: int | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(["ip", "netns", "exec", self.ns, *argv], text=True, stdout=stdout, stderr=stderr)


@dataclass
class Netlab:
    """A set of namespaces and veths that disappear on exit. Names carry a random tag so runs never collide."""

    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    hosts: dict[str, Host] = field(default_factory=dict)
    _namespaces: list[str] = field(default_factory=list)
    _links: list[str] = field(default_factory=list)

    def veth(self, a: str, b: str, mtu: int | None = None) -> tuple[str, str]:
        """A plain veth pair in the root namespace (e.g. a PTF port and a switch port). A larger `mtu` lets a
        test send frames bigger than the profile's port MTU, to see the switch punt them."""
        sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
        self._links.append(a)
        for end in (a, b):
            if mtu:
                sh("ip", "link", "set", end, "mtu", str(mtu))
            sh("ip", "link", "set", end, "up")
            sh("sysctl", "-qw", f"net.ipv6.conf.{end}.disable_ipv6=1", check=False)
            disable_offloads(end)
        return a, b

    def add_host(self, name: str, mac: str, ipv4: str | None = None, gw4: str | None = None,
                 ipv6: str | None = None, gw6: str | None = None, vlan: int | None = None) -> Host:
        """A host in a new namespace; with ``vlan`` it sends and expects frames tagged with that VLAN id (an
        access port of a trunk, as on a switch's tagged uplink), tagged by eBPF since the kernel has no 8021q."""
        ns = f"og{self.tag}-{name}"
        sw = f"s{self.tag}{name}"[:15]
        sh("ip", "netns", "add", ns)
        self._namespaces.append(ns)
        sh("ip", "link", "add", sw, "type", "veth", "peer", "name", "eth0", "netns", ns)
        self._links.append(sw)
        sh("sysctl", "-qw", f"net.ipv6.conf.{sw}.disable_ipv6=1", check=False)
        sh("ip", "link", "set", sw, "up")
        disable_offloads(sw)
        sh("ip", "link", "set", "lo", "up", ns=ns)
        sh("ip", "link", "set", "eth0", "address", mac, ns=ns)
        # No DAD delay: the address is usable at once, and no duplicate can exist on this private link.
        sh("sysctl", "-qw", "net.ipv6.conf.eth0.accept_dad=0", ns=ns, check=False)
        sh("ip", "link", "set", "eth0", "up", ns=ns)
        disable_offloads("eth0", ns=ns)
        if vlan is not None:
            sh(sys.executable, "-m", "offloadgen.vlantag", "eth0", str(vlan), ns=ns)
        if ipv4:
            sh("ip", "addr", "add", ipv4, "dev", "eth0", ns=ns)
            if gw4:
                sh("ip", "route", "add", "default", "via", gw4, ns=ns)
        if ipv6:
            sh("ip", "-6", "addr", "add", ipv6, "dev", "eth0", "nodad", ns=ns)
            if gw6:
                sh("ip", "-6", "route", "add", "default", "via", gw6, ns=ns)
        host = Host(name, ns, "eth0", sw, mac, ipv4, ipv6, vlan)
        self.hosts[name] = host
        return host

    def close(self) -> None:
        for link in reversed(self._links):
            sh("ip", "link", "del", link, check=False)
        for ns in reversed(self._namespaces):
            sh("ip", "netns", "del", ns, check=False)
        self._links.clear()
        self._namespaces.clear()

    def __enter__(self) -> Netlab:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        with contextlib.suppress(Exception):
            self.close()
