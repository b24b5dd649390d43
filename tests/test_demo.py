"""`offloadgen demo` end to end: the real command on a real Mininet topology, softswitch and BMv2.

What a user cares about is asserted, from the report the demo writes and from the machine afterwards: the TCP
and UDP flows reached [HW_OFFLOAD], the slow-path baseline stayed on the slow path, the switch carried most
packets, the timeline is a PNG, and nothing is left behind (interfaces, processes, the status socket), also
when the demo is interrupted.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from offloadgen.cli import UserError
from offloadgen.demo.checks import check_prerequisites

REPO = Path(__file__).resolve().parent.parent
KINDS = ["softswitch", pytest.param("bmv2", marks=pytest.mark.bmv2)]
DEMO = [sys.executable, "-m", "offloadgen.cli", "demo"]

# Runs the CLI with the `mininet` package made unimportable, as on a machine without Mininet.
HIDE_MININET = r"""
import sys
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name == "mininet" or name.startswith("mininet."):
            raise ImportError(f"No module named {name!r}")
        return None
sys.meta_path.insert(0, Hide())
from offloadgen.cli import main
sys.exit(main(sys.argv[1:]))
"""


def links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def processes_mentioning(*needles: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(n in cmdline for n in needles):
            found.append(f"{proc.name}: {cmdline}")
    return found


# The demo's interfaces: the switch's ports in the root namespace, and the host ends Mininet creates there first.
# (Other interfaces may come and go meanwhile: other tests on this machine make their own veths.)
DEMO_LINK = re.compile(r"^(s1|h\d+|wan)-eth\d+$")


def assert_nothing_left(before: set[str], out: Path, stdout: str) -> None:
    new = {name for name in links() - before if DEMO_LINK.match(name)}
    assert not new, f"interfaces left behind: {new}"
    sock = re.search(r"status socket (\S+)", stdout)
    assert sock, stdout
    assert not Path(sock.group(1)).exists() and not Path(sock.group(1)).parent.exists(), "status socket left behind"
    grpc = re.search(r" on (127\.0\.0\.1:\d+)", stdout)
    assert grpc, stdout
    # the controller's argv names the build under --out; the switch's names its gRPC address
    left = processes_mentioning(str(out / "build"), f"--grpc-server-addr {grpc.group(1)}")
    assert not left, f"processes left behind: {left}"


def test_not_root_is_one_line() -> None:
    with pytest.raises(UserError) as exc:
        check_prerequisites("softswitch", euid=1000)
    assert str(exc.value).startswith("needs root") and "\n" not in str(exc.value)


def test_missing_mininet_is_one_line() -> None:
    def no_mininet(name: str) -> object:
        raise ImportError(name)

    with pytest.raises(UserError) as exc:
        check_prerequisites("softswitch", euid=0, import_module=no_mininet)  # type: ignore[arg-type]
    assert "Mininet is not installed" in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.root
def test_missing_mininet_from_the_command_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", HIDE_MININET, "demo", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "offloadgen demo: Mininet is not installed (the Python package 'mininet' is not importable); "
        "run scripts/setup.sh or apt-get install mininet"], proc.stderr
    assert not (tmp_path / "out").exists(), "nothing is created before the checks pass"


@pytest.mark.root
@pytest.mark.mininet
@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_demo_offloads_and_cleans_up(kind: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    before = links()
    proc = subprocess.run([*DEMO, "--switch", kind, "--quick", "--out", str(out)], capture_output=True, text=True,
                          timeout=180, cwd=REPO)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    report = json.loads((out / "report.json").read_text())
    summary = report["summary"]
    assert summary["tcp_hw_offloaded"] and summary["udp_hw_offloaded"], summary

    flows = {(f["proto"], int(f["flow"].rsplit(":", 1)[1])): f for f in report["flows"] if f["proto"] in ("tcp", "udp")}
    offloaded, baseline, udp = flows[("tcp", 5002)], flows[("tcp", 5001)], flows[("udp", 5353)]
    for f in (offloaded, udp):
        states = [s for _, s in f["timeline"]]
        assert states[0] == "slow_path" and "hw_offloaded" in states, f
        assert states.index("slow_path") < states.index("hw_offloaded")
    # the TCP transfer closed: its flow left [HW_OFFLOAD] (closing, then out of the flowtable if time allowed)
    assert offloaded["final_state"] != "hw_offloaded", offloaded
    assert baseline["timeline"][0][1] == "slow_path" and not baseline["reached_hw_offload"], baseline
    # the policy marks the offloaded transfer cs3 on every path: every packet its receiver got carries it
    assert offloaded["statements"].startswith("dscp=cs3@"), offloaded
    assert set(offloaded["dscp_at_receiver"]) == {"cs3"} and offloaded["dscp_at_receiver"]["cs3"] > 1000, offloaded
    assert report["named_counters"]["bulk"]["packets"] > 1000, report["named_counters"]

    totals = report["totals"]
    assert totals["switch_share"] > 0.5, totals  # the switch, not the controller, carried most packets
    assert totals["slowpath_packets"] > 0
    by_name = {x["name"]: x for x in report["throughput"]}
    assert by_name["baseline"]["mbps"] > 0 and by_name["offloaded"]["mbps"] > 0, by_name
    assert report["samples"] and any(s["switch_pps"] for s in report["samples"])

    png = out / "timeline.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "controller.log").stat().st_size > 0
    assert "[HW_OFFLOAD]" in proc.stdout
    assert_nothing_left(before, out, proc.stdout)


@pytest.mark.root
@pytest.mark.mininet
@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_demo_interrupted_cleans_up(signum: int, tmp_path: Path) -> None:
    out = tmp_path / "out"
    before = links()
    proc = subprocess.Popen([*DEMO, "--quick", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)
    assert proc.stdout is not None
    seen = []
    deadline = time.monotonic() + 60
    for line in proc.stdout:  # interrupt in the middle of the traffic, with everything running
        seen.append(line)
        if "traffic:" in line or time.monotonic() > deadline:
            break
    time.sleep(2)
    proc.send_signal(signum)
    rest, err = proc.communicate(timeout=60)
    stdout = "".join(seen) + rest
    assert proc.returncode == 130, f"{stdout}\n{err}"
    assert_nothing_left(before, out, stdout)
