"""A tagged uplink through the whole controller, as a user runs it: profiles/vlan.toml built, the switch
started, `offloadgen run --config configs/router-vlan.toml`, and hosts sending real traffic.

LAN host A (10.0.1.10) on port 1, uplink host B (192.0.2.20) on port 3, which carries VLAN 100 on the wire:
B's interface tags everything it sends and untags what it receives (eBPF, this kernel has no 8021q). The
switch pops the tag on the way in and pushes it on the way out, the router masquerades A behind 192.0.2.1.
What the user must see: connections through the uplink reach [HW_OFFLOAD] with both entries on the switch,
the data arrives intact, a controller restart adopts the live flow, and no flow is refused by the switch.
The third policy statement, VLAN retag (set = { vlan = 200 } for TCP to port 5006), is seen at B: every
packet of that connection arrives tagged 200 instead of the uplink's 100, whichever path carried it.
Runs on softswitch and BMv2.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hostapps import (
    CAPTURE,
    TCP_CLIENT,
    TCP_SERVER,
    UDP_CLIENT,
    UDP_SERVER,
    assert_delivered,
    finish_capture,
    start_server,
    stop,
    wait_for,
)
from test_flowtable_integration import Controller, offloadgen

from offloadgen.build import build
from offloadgen.netlab import Host, Netlab
from offloadgen.profile import load_profile, shipped_profile
from offloadgen.switchproc import SwitchProcess, SwitchSpec, free_grpc_addr, free_port

pytestmark = [pytest.mark.root, pytest.mark.slow]

KINDS = ["softswitch", pytest.param("bmv2", marks=pytest.mark.bmv2)]
REPO = Path(__file__).resolve().parents[2]
UPLINK_ADDR = "192.0.2.1"
B_ADDR = "192.0.2.20"
VID = 100
RETAG_VID = 200
RETAG_RULE = f"""
[[flowtable.rules]]
action = "offload"
proto = "tcp"
dport = 5006
set = {{ vlan = {RETAG_VID} }}
"""


@dataclass
class VlanLab:
    kind: str
    a: Host
    b: Host
    switch: SwitchProcess
    ctl: Controller
    tmp: Path


@pytest.fixture(scope="module")
def vlan_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("build-vlan")
    build(load_profile(shipped_profile("vlan")), out, use_p4c=shutil.which("p4c-bm2-ss") is not None)
    return out


@contextlib.contextmanager
def run_vlan_lab(kind: str, build_dir: Path, config: Path, tmp: Path) -> Iterator[VlanLab]:
    with Netlab() as net:
        a = net.add_host("a", mac="02:00:00:00:00:10", ipv4="10.0.1.10/24", gw4="10.0.1.1")
        b = net.add_host("b", mac="02:00:00:00:00:20", ipv4=f"{B_ADDR}/24", gw4=UPLINK_ADDR, vlan=VID)
        spec = SwitchSpec(kind=kind, ports={1: a.switch_iface, 3: b.switch_iface}, grpc_addr=free_grpc_addr(),
                          cpu_port=510, log_file=tmp / "switch.log", thrift_port=free_port())
        sw = SwitchProcess(spec).start()
        sock = tmp / "ctl.sock"
        ctl = Controller([sys.executable, "-m", "offloadgen.cli", "-v", "run", "--config", str(config),
                          "--switch", spec.grpc_addr, "--build", str(build_dir), "--target", kind,
                          "--status-socket", str(sock)], sock, tmp / "controller.log")
        lab = VlanLab(kind, a, b, sw, ctl, tmp)
        try:
            ctl.start()
            yield lab
        finally:
            ctl.stop()
            sw.stop()
            print((tmp / "controller.log").read_text()[-4000:])


@pytest.fixture(scope="module", params=KINDS)
def vlab(request: pytest.FixtureRequest, vlan_build: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VlanLab]:
    tmp = tmp_path_factory.mktemp(f"vlan-{request.param}")
    config = tmp / "router-vlan.toml"
    config.write_text((REPO / "configs" / "router-vlan.toml").read_text() + RETAG_RULE)
    with run_vlan_lab(request.param, vlan_build, config, tmp) as lab:
        yield lab


def transfer(lab: VlanLab, size: int, pause: float, port: int) -> tuple[subprocess.Popen[str], int]:
    proc = lab.a.popen(sys.executable, "-c", TCP_CLIENT, B_ADDR, str(port), str(size), str(pause),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline().split()[1])


def entries_of(lab: VlanLab, flow_id: int) -> list[dict[str, Any]]:
    return [e for e in lab.ctl.entries() if e["flow"] == flow_id]


def finish(proc: subprocess.Popen[str], size: int) -> None:
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert_delivered(stdout, UPLINK_ADDR, size, "8 MiB intact, A masqueraded behind the uplink")


def test_tcp_through_the_tagged_uplink_is_offloaded(vlab: VlanLab) -> None:
    srv = start_server(vlab.b, TCP_SERVER, "0.0.0.0", "5002")
    size = 8 * 1024 * 1024
    proc, sport = transfer(vlab, size, 0.01, 5002)
    try:
        flow = vlab.ctl.wait_flow("tcp", 5002, sport=sport, timeout=10, what="the uplink transfer to reach [HW_OFFLOAD]")
        assert flow["tag"] == "[HW_OFFLOAD]" and not flow.get("last_error"), flow
        entries = entries_of(vlab, flow["id"])
        assert {e["dir"] for e in entries} == {"original", "reply"}, entries
        assert {e["params"]["port"] for e in entries} == {1, 3}
        # the action list says what the pipeline does on the tagged port: push on the way out, pop on the way in
        out = offloadgen("flows", "--status-socket", str(vlab.ctl.sock))
        assert "vlan_push=100" in out.stdout and "vlan_pop" in out.stdout, out.stdout
        finish(proc, size)
    finally:
        if proc.poll() is None:
            proc.kill()
        stop(srv)
    st = vlab.ctl.stats()["flowtable"]["counters"]
    assert st["hw_unsupported"] == 0, st
    assert vlab.ctl.stats()["controller"]["hw_packets"] > 1000


def test_udp_from_the_tagged_side_is_offloaded(vlab: VlanLab) -> None:
    """UDP: every answer comes back through the tagged port, and the flow is offloaded in both directions."""
    srv = start_server(vlab.b, UDP_SERVER, "0.0.0.0", "5353")
    try:
        out = vlab.a.run(sys.executable, "-c", UDP_CLIENT, B_ADDR, "5353", "20", "0.1", "41000", timeout=30)
        assert out.stdout.splitlines() == [f"{UPLINK_ADDR} hello {i}" for i in range(20)], out.stdout
        flow = vlab.ctl.wait_flow("udp", 5353, sport=41000, timeout=5, what="the UDP flow to be offloaded")
        assert len(entries_of(vlab, flow["id"])) == 2
    finally:
        stop(srv)


def test_controller_restart_adopts_a_live_uplink_flow(vlab: VlanLab) -> None:
    srv = start_server(vlab.b, TCP_SERVER, "0.0.0.0", "5004")
    size = 6 * 1024 * 1024
    proc, sport = transfer(vlab, size, 0.05, 5004)
    try:
        vlab.ctl.wait_flow("tcp", 5004, sport=sport, timeout=10, what="the transfer to be offloaded")
        vlab.ctl.kill()
        time.sleep(1)  # the switch forwards on its own meanwhile
        vlab.ctl.start()
        after = vlab.ctl.wait_flow("tcp", 5004, sport=sport, timeout=5,
                                   what="the restarted controller to adopt the live flow")
        assert len(entries_of(vlab, after["id"])) == 2
        st = vlab.ctl.stats()["flowtable"]
        assert st["rebuilt"] >= 1 and st["counters"]["hw_unsupported"] == 0, st
        finish(proc, size)
    finally:
        if proc.poll() is None:
            proc.kill()
        stop(srv)


def test_vlan_retag_statement_on_every_packet(vlab: VlanLab) -> None:
    """Every packet of the retagged connection reaches B tagged 200, not the uplink's 100: the slow path's
    handshake, the switch's bulk, the close."""
    cap = vlab.b.popen(sys.executable, "-c", CAPTURE, "5006", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert cap.stdout is not None and cap.stdout.readline().strip() == "ready"
    srv = start_server(vlab.b, TCP_SERVER, "0.0.0.0", "5006")
    size = 4 * 1024 * 1024
    proc, sport = transfer(vlab, size, 0.03, 5006)
    try:
        flow = vlab.ctl.wait_flow("tcp", 5006, sport=sport, timeout=10, what="the retagged transfer to reach [HW_OFFLOAD]")
        [out_entry] = [e for e in entries_of(vlab, flow["id"]) if e["params"]["port"] == 3]
        assert out_entry["action"] == "offload_nat_stmt" and out_entry["params"]["vid"] == RETAG_VID, out_entry
        assert flow["orig"]["statements"] == f"vlan={RETAG_VID}@switch", flow
        finish(proc, size)
        wait_for(lambda: vlab.ctl.flow("tcp", 5006, sport=sport) is None, 15, "the closed flow to leave the flowtable")
    finally:
        if proc.poll() is None:
            proc.kill()
        stop(srv)
        seen = finish_capture(cap)
    assert seen["drops"] == 0 and seen["syn"] >= 1 and seen["fin"] >= 1, seen
    assert seen["vid"] == {RETAG_VID: seen["packets"]} and seen["packets"] > 2500, seen
