"""Mininet switch classes for a P4Runtime switch: softswitch or BMv2 simple_switch_grpc, same argv.

A plain script module (this folder has no __init__.py: a package named `mininet` would shadow Mininet).
The switch runs in the root namespace like Mininet's other software switches; its ports are the Mininet
interfaces `<name>-ethN`, attached as P4 port N. Start-up waits until the P4Runtime server answers (the
process wrapper polls), and stop sends SIGTERM, then SIGKILL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mininet.log import info
from mininet.node import Switch

from offloadgen.netlab import disable_offloads
from offloadgen.switchproc import SwitchKind, SwitchProcess, SwitchSpec


class P4RuntimeSwitch(Switch):  # type: ignore[misc]
    """A Mininet switch served by softswitch or simple_switch_grpc; the controller connects over gRPC."""

    def __init__(self, name: str, kind: SwitchKind = "softswitch", grpc_addr: str = "127.0.0.1:9559",
                 device_id: int = 1, cpu_port: int = 255, bmv2: str | None = None,
                 log_dir: str | None = None, log_level: str | None = None, **params: Any) -> None:
        super().__init__(name, dpid=f"{device_id:016x}", **params)
        self.kind: SwitchKind = kind
        self.grpc_addr = grpc_addr
        self.device_id = device_id
        self.cpu_port = cpu_port
        self.bmv2 = bmv2
        self.log_file = Path(log_dir) / f"{name}-{kind}.log" if log_dir else None
        self.log_level = log_level
        self.process: SwitchProcess | None = None

    def port_map(self) -> dict[int, str]:
        """P4 port number -> interface, from Mininet's port numbering (the `port=` given to addLink)."""
        return {port: intf.name for intf, port in self.ports.items() if intf.name != "lo"}

    def start(self, controllers: list[Any]) -> None:
        ports = self.port_map()
        for iface in ports.values():
            disable_offloads(iface)
        spec = SwitchSpec(kind=self.kind, ports=ports, grpc_addr=self.grpc_addr, device_id=self.device_id,
                          cpu_port=self.cpu_port, binary=self.bmv2, log_file=self.log_file,
                          log_level=self.log_level)
        info(f"*** Starting {self.kind} {self.name} on {self.grpc_addr} with ports {ports}\n")
        self.process = SwitchProcess(spec).start()

    def stop(self, deleteIntfs: bool = True) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None
        super().stop(deleteIntfs)

    def restart_process(self) -> None:
        """Kill and start the switch process again (a switch restart: empty tables, no pipeline)."""
        if self.process is not None:
            self.process.kill()
        spec = self.process.spec if self.process else None
        if spec is not None:
            self.process = SwitchProcess(spec).start()

    @staticmethod
    def setup() -> None:
        """Mininet calls this once per class; nothing to load (no kernel module, unlike OVS)."""
