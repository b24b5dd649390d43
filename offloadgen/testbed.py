"""The Mininet testbed: LAN hosts and a WAN host around one P4Runtime switch, and the controller beside it.

Used by `offloadgen demo` and by the plain scripts in mininet/ (`mininet/topo.py`, and `mininet/p4switch.py`
for `mn --custom`). Mininet is imported here at module level, so only code that has already checked that
Mininet is installed imports this module (the demo checks first and says so in one line).

The host addresses come from the router config, not from a second table: a LAN host sits at .10 of its
port's subnet with the port's address as gateway, the WAN host at .20 of the WAN subnet. The WAN host has a
default route to the router but nothing routes 10/8 back to it: masquerading is what makes replies return.
The switch runs in the root namespace like Mininet's other software switches; its ports are the Mininet
interfaces `<switch>-ethN`, attached as P4 port N.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from mininet.log import info
from mininet.net import Mininet
from mininet.node import Switch

from offloadgen.netlab import OFFLOADS, disable_offloads, sh
from offloadgen.pki import TestPki, make_test_pki
from offloadgen.switchproc import SwitchKind, SwitchProcess, SwitchSpec, SwitchTls, free_grpc_addr
from runtime.config import RouterConfig
from runtime.status import StatusError, query

REPO = Path(__file__).resolve().parent.parent


class TestbedError(RuntimeError):
    """The topology or the controller could not be brought up; the message says which and where the log is."""


class P4RuntimeSwitch(Switch):
    """A Mininet switch served by softswitch or simple_switch_grpc; the controller connects over gRPC.

    Start-up waits until the P4Runtime server answers (SwitchProcess polls), and stop sends SIGTERM, then
    SIGKILL, so a topology never races a half-started switch or leaves one behind.
    """

    def __init__(self, name: str, kind: SwitchKind = "softswitch", grpc_addr: str = "127.0.0.1:9559",
                 device_id: int = 1, cpu_port: int = 255, bmv2: str | None = None,
                 log_dir: str | None = None, log_level: str | None = None, tls: SwitchTls | None = None,
                 **params: Any) -> None:
        super().__init__(name, dpid=f"{device_id:016x}", **params)
        self.kind: SwitchKind = kind
        self.grpc_addr = grpc_addr
        self.device_id = device_id
        self.cpu_port = cpu_port
        self.bmv2 = bmv2
        self.log_file = Path(log_dir) / f"{name}-{kind}.log" if log_dir else None
        self.log_level = log_level
        self.tls = tls  # serve P4Runtime over TLS (the controller then needs the matching --tls-* options)
        self.process: SwitchProcess | None = None

    def port_map(self) -> dict[int, str]:
        """P4 port number -> interface, from Mininet's port numbering (the `port=` given to addLink)."""
        return {port: intf.name for intf, port in self.ports.items() if intf.name != "lo"}

    def start(self, controllers: list[Any]) -> None:
        ports = self.port_map()
        for iface in ports.values():
            disable_offloads(iface)
            # the root namespace must not send its own IPv6 router solicitations and MLD reports into the switch
            sh("sysctl", "-qw", f"net.ipv6.conf.{iface}.disable_ipv6=1", check=False)
        spec = SwitchSpec(kind=self.kind, ports=ports, grpc_addr=self.grpc_addr, device_id=self.device_id,
                          cpu_port=self.cpu_port, binary=self.bmv2, log_file=self.log_file,
                          log_level=self.log_level, tls=self.tls)
        info(f"*** Starting {self.kind} {self.name} on {self.grpc_addr}{' (TLS)' if self.tls else ''} with ports "
             f"{ports}\n")
        self.process = SwitchProcess(spec).start()

    def stop(self, deleteIntfs: bool = True) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None
        super().stop(deleteIntfs)

    def restart_process(self) -> None:
        """Kill and start the switch process again (a switch restart: empty tables, no pipeline)."""
        spec = self.process.spec if self.process else None
        if self.process is not None:
            self.process.kill()
        if spec is not None:
            self.process = SwitchProcess(spec).start()

    @staticmethod
    def setup() -> None:
        """Mininet calls this once per class; nothing to load (no kernel module, unlike OVS)."""


@dataclass(frozen=True)
class HostPlan:
    """One host: its router port, fixed MAC (so captures and logs read the same every run) and addresses."""

    name: str
    port: int
    mac: str
    wan: bool
    ipv4: str | None = None  # CIDR
    gw4: str | None = None
    ipv6: str | None = None
    gw6: str | None = None

    @property
    def ip4(self) -> str | None:
        return self.ipv4.split("/")[0] if self.ipv4 else None


def wan_port(config: RouterConfig) -> int:
    """The port masquerade leaves by (the WAN), else one named "wan", else the highest-numbered port."""
    if config.snat:
        return config.snat[0].out_port
    return config.port_names.get("wan", max(config.ports))


def plan_hosts(config: RouterConfig, lan_hosts: int) -> list[HostPlan]:
    """LAN hosts on the first `lan_hosts` non-WAN ports (in port order), then the WAN host."""
    wan = wan_port(config)
    lan_ports = sorted(p for p in config.ports if p != wan)
    if not 1 <= lan_hosts <= len(lan_ports):
        raise TestbedError(f"--hosts must be 1..{len(lan_ports)}: {config.source} has {len(lan_ports)} LAN ports")
    plans = []
    for i, port in enumerate([*lan_ports[:lan_hosts], wan], start=1):
        is_wan = port == wan
        host_no = 20 if is_wan else 10
        pc = config.ports[port]
        v4 = pc.primary(4)
        v6 = pc.primary(6)
        ipv4 = gw4 = ipv6 = gw6 = None
        if isinstance(v4, ipaddress.IPv4Interface):
            ipv4 = f"{v4.network.network_address + host_no}/{v4.network.prefixlen}"
            gw4 = str(v4.ip)
        if isinstance(v6, ipaddress.IPv6Interface) and not v6.ip.is_link_local:
            ipv6 = f"{v6.network.network_address + int(str(host_no), 16)}/{v6.network.prefixlen}"  # ::10, ::20
            gw6 = str(v6.ip)
        name = "wan" if is_wan else f"h{i}"
        mac = "02:00:00:00:00:20" if is_wan else f"02:00:00:00:00:1{i}"
        plans.append(HostPlan(name, port, mac, is_wan, ipv4, gw4, ipv6, gw6))
    return plans


def controller_argv(config_path: Path, grpc_addr: str, build_dir: Path, kind: SwitchKind,
                    status_socket: Path, pki: TestPki | None = None, slowpath: str = "offloadgen") -> list[str]:
    """`offloadgen -v run ...` with this interpreter, so the controller is the same install as the caller;
    with ``pki``, over mutual TLS with its CA and client certificate."""
    argv = [sys.executable, "-m", "offloadgen.cli", "-v", "run", "--config", str(config_path),
            "--switch", grpc_addr, "--build", str(build_dir), "--target", kind,
            "--status-socket", str(status_socket), "--slowpath", slowpath]
    if pki is not None:
        argv += ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]
    return argv


class Testbed:
    """Mininet network + switch + controller subprocess; a context manager that removes all of it on exit.

    The controller is a subprocess in its own session so that stopping it is a signal to one process group,
    and so that a Ctrl-C reaches the demo first, which then stops things in order (controller, then network).
    """

    def __init__(self, config: RouterConfig, config_path: Path, build_dir: Path, kind: SwitchKind,
                 cpu_port: int, lan_hosts: int, log_dir: Path, status_socket: Path,
                 bmv2: str | None = None, grpc_addr: str | None = None, switch_name: str = "s1",
                 switch_log_level: str | None = None, tls: bool = False, slowpath: str = "offloadgen") -> None:
        self.config = config
        self.slowpath = slowpath
        self.config_path = config_path.resolve()
        self.build_dir = build_dir.resolve()
        self.kind: SwitchKind = kind
        self.cpu_port = cpu_port
        self.plans = plan_hosts(config, lan_hosts)
        self.log_dir = log_dir.resolve()
        self.status_socket = status_socket
        self.bmv2 = bmv2
        self.grpc_addr = grpc_addr or free_grpc_addr()
        self.switch_name = switch_name
        self.switch_log_level = switch_log_level
        self.net: Any = None
        self.controller: subprocess.Popen[bytes] | None = None
        self.controller_log = self.log_dir / "controller.log"
        # tls: a throwaway CA and certificates in <log_dir>/tls; the switch requires a client certificate
        self.tls = tls
        self.pki: TestPki | None = None

    # -- network ---------------------------------------------------------------------------------------
    def switch_ifaces(self) -> list[str]:
        return [f"{self.switch_name}-eth{p.port}" for p in self.plans]

    def start_network(self) -> None:
        """Build and start the Mininet network; the switch is answering P4Runtime when this returns."""
        stale = [i for i in self.switch_ifaces() if Path(f"/sys/class/net/{i}").exists()]
        if stale:
            raise TestbedError(f"interface {stale[0]} exists already (another topology running, or one left "
                               f"behind); remove it with `ip link del {stale[0]}`")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        switch_tls = None
        if self.tls:
            self.pki = make_test_pki(self.log_dir / "tls")
            switch_tls = SwitchTls(self.pki.server_cert, self.pki.server_key, self.pki.ca, client_auth=True)
        net = Mininet(topo=None, build=False, controller=None, autoSetMacs=False, waitConnected=False)
        self.net = net
        switch = net.addSwitch(self.switch_name, cls=P4RuntimeSwitch, kind=self.kind, grpc_addr=self.grpc_addr,
                               cpu_port=self.cpu_port, bmv2=self.bmv2, log_dir=str(self.log_dir),
                               log_level=self.switch_log_level, tls=switch_tls)
        for plan in self.plans:
            host = net.addHost(plan.name, ip=plan.ipv4, mac=plan.mac,
                               defaultRoute=f"via {plan.gw4}" if plan.gw4 else None)
            net.addLink(host, switch, port2=plan.port)
        net.build()
        for plan in self.plans:
            self._configure_host(plan)
        net.start()

    def _configure_host(self, plan: HostPlan) -> None:
        host = self.net.get(plan.name)
        intf = host.defaultIntf().name
        # checksum offload on a veth leaves checksums unfilled, which a userspace switch forwards as they are
        host.cmd(f"for f in {' '.join(OFFLOADS)}; do ethtool -K {intf} $f off; done >/dev/null 2>&1")
        if plan.ipv6:
            host.cmd(f"sysctl -qw net.ipv6.conf.{intf}.accept_dad=0")
            host.cmd(f"ip -6 addr add {plan.ipv6} dev {intf} nodad")
            if plan.gw6:
                host.cmd(f"ip -6 route add default via {plan.gw6}")

    def host(self, name: str) -> Any:
        return self.net.get(name)

    @property
    def lan(self) -> list[HostPlan]:
        return [p for p in self.plans if not p.wan]

    @property
    def wan(self) -> HostPlan:
        return next(p for p in self.plans if p.wan)

    @property
    def switch_process(self) -> SwitchProcess | None:
        if self.net is None:
            return None
        sw = self.net.get(self.switch_name)
        return sw.process if isinstance(sw, P4RuntimeSwitch) else None

    def switch_rx_packets(self) -> int:
        """Packets the hosts sent into the switch: the switch-side veth ends' RX counters (root namespace)."""
        total = 0
        for iface in self.switch_ifaces():
            with contextlib.suppress(OSError, ValueError):
                total += int(Path(f"/sys/class/net/{iface}/statistics/rx_packets").read_text())
        return total

    # -- controller ------------------------------------------------------------------------------------
    def start_controller(self, timeout: float = 30.0) -> None:
        """Start `offloadgen run` and return once its status socket answers (polled, no fixed sleep)."""
        argv = controller_argv(self.config_path, self.grpc_addr, self.build_dir, self.kind, self.status_socket,
                               self.pki, self.slowpath)
        with open(self.controller_log, "ab") as log:
            self.controller = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                               start_new_session=True, cwd=REPO)
        deadline = time.monotonic() + timeout
        while True:
            if self.controller.poll() is not None:
                raise TestbedError(f"the controller exited with status {self.controller.returncode} during start-up; "
                                   f"last lines of {self.controller_log}:\n{self.controller_log_tail()}")
            if self.status_socket.exists():
                try:
                    query("stats", self.status_socket, timeout=2.0)
                    return
                except StatusError:
                    pass
            if time.monotonic() > deadline:
                raise TestbedError(f"the controller's status socket {self.status_socket} did not answer within "
                                   f"{timeout:.0f} s; see {self.controller_log}")
            time.sleep(0.1)

    def controller_log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.controller_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop_controller(self, timeout: float = 10.0) -> int | None:
        proc = self.controller
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
                proc.wait()
        return proc.returncode

    # -- lifecycle -------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Controller first (it must not see its switch vanish), then the network; then any leftovers."""
        with contextlib.suppress(Exception):
            self.stop_controller()
        if self.net is not None:
            try:
                self.net.stop()
            except Exception as exc:  # a half-built network still has to go; the sweep below finishes it
                info(f"*** net.stop failed: {exc}\n")
                sw = self.switch_process
                if sw is not None:
                    sw.stop()
            self.net = None
        for iface in self.switch_ifaces():
            if Path(f"/sys/class/net/{iface}").exists():
                sh("ip", "link", "del", iface, check=False)
        with contextlib.suppress(FileNotFoundError):
            self.status_socket.unlink()

    def __enter__(self) -> Testbed:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
