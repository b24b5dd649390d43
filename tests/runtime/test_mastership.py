"""Mastership on both switches: another client with a higher election id takes primary; the controller says
so at WARNING and in `offloadgen stats`, writes nothing while backup (its queued work waits, packet-outs are
refused), and when that client leaves it is primary again and reconciles the switch's flow tables, deleting
what the other primary left there."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hostapps import UDP_CLIENT, UDP_SERVER, start_server, stop, wait_for

from offloadgen.netlab import Netlab
from offloadgen.switchproc import SwitchProcess, SwitchSpec, free_grpc_addr
from runtime.client import SwitchClient
from runtime.config import load_config
from runtime.controller import Controller
from runtime.entities import IdleTimeout, TableEntry
from runtime.errors import P4RuntimeError
from runtime.pipeline import load_build
from runtime.status import StatusServer

KINDS = ["softswitch", pytest.param("bmv2", marks=pytest.mark.bmv2)]
pytestmark = [pytest.mark.root]

STRAY = TableEntry("flow_v4", {"in_port": 1, "src_addr": "10.0.1.77", "dst_addr": "192.0.2.77", "proto": 17,
                               "src_port": 7777, "dst_port": 53},
                   "offload", {"port": 4, "smac": "02:00:00:00:01:04", "dmac": "02:00:00:00:00:20"})




def stats_command(sock: Path) -> str:
    out = subprocess.run([sys.executable, "-m", "offloadgen.cli", "stats", "--status-socket", str(sock)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def counters(stats_text: str) -> dict[str, int]:
    """The counter lines under the `mastership:` line."""
    lines = stats_text[stats_text.index("mastership:"):].splitlines()[1:3]
    return {k: int(v) for k, v in (line.split() for line in lines)}


def switch_entries(addr: str, p4info: Any) -> list[TableEntry]:
    """What the switch holds, read by a third client (a backup may read)."""
    reader = SwitchClient(addr, election_id=(0, 1), p4info=p4info, reconnect=False)
    with reader.connect(10, require_primary=False):
        return reader.read_table("flow_v4")


@pytest.mark.parametrize("kind", KINDS)
def test_mastership_lost_and_regained(kind: str, build_dir: Path, router_config_path: Path, tmp_path: Path,
                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="runtime.controller")
    pipeline = load_build(build_dir, kind)
    sock = tmp_path / "c.sock"
    with SwitchProcess(SwitchSpec(kind=kind, grpc_addr=free_grpc_addr())) as sw:
        ctl = Controller(load_config(router_config_path), pipeline, sw.grpc_addr, election_id=(0, 10))
        status = StatusServer(sock)
        for name, handler in ctl.status_handlers().items():
            status.register(name, handler)
        with status, ctl:
            assert "mastership: primary\n" in stats_command(sock)

            intruder = SwitchClient(sw.grpc_addr, election_id=(0, 20), p4info=pipeline.p4info, reconnect=False)
            intruder.connect(10)
            wait_for(lambda: not ctl.mastership.primary, 10, "the controller to see it is backup")
            text = stats_command(sock)
            assert "mastership: backup since " in text and "(primary election id 20)" in text, text
            assert counters(text) == {"lost": 1, "regained": 0}, text
            lost = [r for r in caplog.records if "mastership lost" in r.getMessage()]
            assert len(lost) == 1 and lost[0].levelno == logging.WARNING
            assert "its election id 20, ours 10" in lost[0].getMessage()

            # The new primary leaves an entry no flow of ours owns. The switch tells of it (an idle-timeout
            # notice); the controller queues its deletion -- and, as a backup, must not write it.
            intruder.insert([STRAY])
            seen = switch_entries(sw.grpc_addr, pipeline.p4info)
            assert len(seen) == 1
            ctl.call(lambda: ctl.offloader.on_idle_timeout(IdleTimeout((seen[0],), 0)))
            engine = ctl.offloader.engine
            assert engine is not None and engine.paused
            assert engine.run_once() == 0  # the queued delete waits
            assert len(switch_entries(sw.grpc_addr, pipeline.p4info)) == 1
            assert ctl.offloader.ft.counters.hw_write_failures == 0  # nothing was tried and refused
            with pytest.raises(P4RuntimeError, match="a backup cannot send packets"):
                ctl.client.packet_out(b"\x00" * 60, egress_port=4)

            # The other client goes away: the switch makes us primary again; we reconcile its tables.
            reconciles = ctl.offloader.reconciles
            intruder.close()
            wait_for(lambda: ctl.mastership.primary and ctl.offloader.reconciles > reconciles, 15,
                     "the controller to be primary again and reconcile")
            wait_for(lambda: switch_entries(sw.grpc_addr, pipeline.p4info) == [], 15,
                     "the other primary's entry to be deleted")
            wait_for(lambda: not engine.paused, 10, "the offload engine to resume after the reconciliation")
            text = stats_command(sock)
            assert "mastership: primary\n" in text
            assert counters(text) == {"lost": 1, "regained": 1}, text
            regained = [r for r in caplog.records if "mastership regained" in r.getMessage()]
            assert len(regained) == 1 and regained[0].levelno == logging.WARNING
            assert ctl.offloader.ft.counters.hw_write_failures == 0


def switch_packets(addr: str, p4info: Any) -> int:
    """Packets the switch counted on its flow entries (they start from 0 when re-installed)."""
    reader = SwitchClient(addr, election_id=(0, 1), p4info=p4info, reconnect=False)
    with reader.connect(10, require_primary=False):
        return sum(e.counter.packets for e in reader.read_table("flow_v4", counters=True) if e.counter)


def hw_flow(ctl: Controller, dport: int) -> dict[str, Any] | None:
    return next((f for f in ctl.offloader.flows() if f["orig"]["dport"] == dport and f["tag"] == "[HW_OFFLOAD]"),
                None)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_live_flow_is_reinstalled_when_primary_again(kind: str, build_dir: Path, router_config_path: Path) -> None:
    """A live UDP exchange is offloaded; another client takes primary and, as a controller cleaning up
    would, deletes the flow's entries. While it is primary the traffic is its business (the packets are
    punted to it). When it leaves, the controller reconciles: the [HW_OFFLOAD] flow the switch lacks is
    installed again and the exchange is answered by the switch once more."""
    pipeline = load_build(build_dir, kind)
    with Netlab() as net:
        a = net.add_host("a", mac="02:00:00:00:00:10", ipv4="10.0.1.10/24", gw4="10.0.1.1")
        b = net.add_host("b", mac="02:00:00:00:00:20", ipv4="192.0.2.20/24", gw4="192.0.2.1")
        spec = SwitchSpec(kind=kind, ports={1: a.switch_iface, 4: b.switch_iface}, grpc_addr=free_grpc_addr())
        with SwitchProcess(spec) as sw, Controller(load_config(router_config_path), pipeline, sw.grpc_addr,
                                                   election_id=(0, 10)) as ctl:
            srv = start_server(b, UDP_SERVER, "0.0.0.0", "5360")
            try:
                sender = a.popen(sys.executable, "-c", UDP_CLIENT, "192.0.2.20", "5360", "250", "0.1", "44100",
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                flow = wait_for(lambda: hw_flow(ctl, 5360), 15, "the UDP flow to reach [HW_OFFLOAD]")
                wait_for(lambda: len(switch_entries(sw.grpc_addr, pipeline.p4info)) == 2, 10, "its two entries")

                intruder = SwitchClient(sw.grpc_addr, election_id=(0, 20), p4info=pipeline.p4info, reconnect=False)
                intruder.connect(10)
                wait_for(lambda: not ctl.mastership.primary, 10, "the controller to see it is backup")
                intruder.delete(intruder.read_table("flow_v4"))
                assert switch_entries(sw.grpc_addr, pipeline.p4info) == []
                reconciles = ctl.offloader.reconciles
                intruder.close()

                wait_for(lambda: ctl.mastership.primary and ctl.offloader.reconciles > reconciles, 15,
                         "the controller to be primary again and reconcile")
                wait_for(lambda: len(switch_entries(sw.grpc_addr, pipeline.p4info)) == 2, 10,
                         "the flow's entries to be installed again")
                again = wait_for(lambda: hw_flow(ctl, 5360), 10, "[HW_OFFLOAD] again")
                assert again["id"] == flow["id"]  # the same flow, not a new one
                wait_for(lambda: switch_packets(sw.grpc_addr, pipeline.p4info) >= 4, 15,
                         "the switch to forward the exchange on the re-installed entries")
                stdout, _ = sender.communicate(timeout=120)
                answers = stdout.strip().split("\n")
                assert answers[-5:].count("timeout") == 0, answers[-10:]
                assert ctl.mastership.lost == 1 and ctl.mastership.regained == 1
            finally:
                stop(srv)
