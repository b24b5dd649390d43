"""`offloadgen run`: connects, pushes the pipeline, routes, logs new connections, stops cleanly on SIGTERM.

A separate module from test_router_integration so that its switch is gone (two BMv2s cannot share the
Thrift port)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hostapps import wait_for

from offloadgen.netlab import Netlab
from offloadgen.switchproc import SwitchProcess, SwitchSpec, free_grpc_addr
from runtime.pipeline import load_build

A_MAC, B_MAC, WAN_ADDR = "02:00:00:00:00:10", "02:00:00:00:00:20", "192.0.2.1"



pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.mark.parametrize(("kind", "slowpath"), [("softswitch", "offloadgen"),
                                               pytest.param("bmv2", "offloadgen", marks=pytest.mark.bmv2),
                                               ("softswitch", "kernel")])
def test_offloadgen_run_command(kind: str, slowpath: str, build_dir: Path, router_config_path: Path,
                                tmp_path: Path) -> None:
    """The CLI: connects, pushes, routes, logs new connections (without -v, with either slow path), stops
    cleanly on SIGTERM."""
    pipeline = load_build(build_dir, kind)  # noqa: F841 - fails early with a clear message when not built
    with Netlab() as net:
        a = net.add_host("a", mac=A_MAC, ipv4="10.0.1.10/24", gw4="10.0.1.1")
        b = net.add_host("b", mac=B_MAC, ipv4="192.0.2.20/24", gw4=WAN_ADDR)
        spec = SwitchSpec(kind=kind, ports={1: a.switch_iface, 4: b.switch_iface}, grpc_addr=free_grpc_addr())
        with SwitchProcess(spec) as sw:
            log = tmp_path / "run.log"
            with open(log, "w") as fh:
                proc = subprocess.Popen([sys.executable, "-m", "offloadgen.cli", "run", "--config", str(router_config_path),
                                         "--build", str(build_dir), "--switch", sw.grpc_addr, "--target", kind,
                                         "--slowpath", slowpath],
                                        stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            try:
                wait_for(lambda: "running" in log.read_text() or proc.poll() is not None, 30, "the controller")
                assert proc.poll() is None, log.read_text()
                out = a.run("ping", "-c", "2", "-i", "0.2", "-W", "3", "192.0.2.20", check=False)
                assert out.returncode == 0, out.stdout + log.read_text()
                wait_for(lambda: "new connection" in log.read_text(), 5, "the new-connection log line")
            finally:
                proc.send_signal(signal.SIGTERM)
                rc = proc.wait(15)
            text = log.read_text()
            assert rc == 0, text
            assert "Traceback" not in text, text
            assert "icmp src=10.0.1.10 dst=192.0.2.20" in text


def test_connect_timeout_is_honoured(build_dir: Path, router_config_path: Path, tmp_path: Path) -> None:
    """--connect-timeout used to be ignored (always 10 s). A peer that accepts but never answers stands in for
    a switch that does not arbitrate; the error names the timeout given."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        addr = f"127.0.0.1:{silent.getsockname()[1]}"
        out = subprocess.run([sys.executable, "-m", "offloadgen.cli", "run", "--config", str(router_config_path),
                              "--build", str(build_dir), "--switch", addr, "--connect-timeout", "1.5",
                              "--status-socket", str(tmp_path / "c.sock")],
                             capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert f"{addr}: no arbitration answer within 1.5 s (plaintext)" in out.stderr, out.stderr
