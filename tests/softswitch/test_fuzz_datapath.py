"""Malformed frames into a switch with the controller attached: hosts in namespaces, the switch as a process,
and `offloadgen run`, as in tests/runtime/test_flowtable_integration.py (whose lab this reuses).

Host A sends a few thousand fuzzed frames (tests/softswitch/fuzzcases.py, fixed seed) into its switch port:
cut headers, lying lengths, bad IHL, fragments, odd EtherTypes and VLAN tags, flipped bits. Misses go to the
controller as packet-ins, so both processes parse every one of them. Afterwards neither has exited, the
controller still answers on its status socket, and ping and a TCP transfer from A to B still work.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "runtime"))
from hostapps import TCP_CLIENT, TCP_SERVER, start_server, stop, wait_for  # noqa: E402
from test_flowtable_integration import B_ADDR, Lab, make_config, run_lab  # noqa: E402

pytestmark = [pytest.mark.root, pytest.mark.slow]

KINDS = ["softswitch", pytest.param("bmv2", marks=pytest.mark.bmv2)]
FRAMES = 3000
SEED = 13

SENDER = r"""
import random, socket, sys
sys.path.insert(0, sys.argv[1])
from fuzzcases import frame
iface, seed, count, src_mac = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), bytes.fromhex(sys.argv[5])
rng = random.Random(seed)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((iface, 0))
sent = refused = 0
for _ in range(count):
    try:
        s.send(frame(rng, src_mac=src_mac))
        sent += 1
    except OSError:  # shorter than an Ethernet header, or longer than the MTU: the kernel refuses it
        refused += 1
print(sent, refused)
"""


def send_fuzzed_frames(lab: Lab, count: int, seed: int) -> tuple[int, int]:
    """Send `count` fuzzed frames from host A's interface; (sent, refused by the kernel)."""
    res = lab.a.run(sys.executable, "-c", SENDER, str(Path(__file__).parent), lab.a.iface, str(seed), str(count),
                    lab.a.mac.replace(":", ""), timeout=300)
    sent, refused = map(int, res.stdout.split())
    return sent, refused


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from offloadgen.build import build
    from offloadgen.profile import load_profile

    out = tmp_path_factory.mktemp("build")
    build(load_profile(REPO / "profiles" / "default.toml"), out, use_p4c=shutil.which("p4c-bm2-ss") is not None)
    return out


@pytest.fixture(params=KINDS)
def lab(request: pytest.FixtureRequest, build_dir: Path, tmp_path: Path) -> Iterator[Lab]:
    config = make_config(REPO / "configs" / "router.toml", tmp_path)
    with run_lab(request.param, build_dir, config, tmp_path) as lab:
        yield lab


def test_fuzzed_frames_leave_switch_and_controller_working(lab: Lab) -> None:
    # the path works before (and the controller has pushed the pipeline: frames before that are only dropped)
    wait_for(lambda: lab.a.run("ping", "-c", "1", "-W", "2", B_ADDR, check=False).returncode == 0, 60,
             "ping A -> B before the fuzzed frames")
    before = lab.ctl.packet_in()
    sent, refused = send_fuzzed_frames(lab, FRAMES, SEED)
    assert sent > FRAMES // 2, (sent, refused)
    # the controller saw the frames (misses are punted to it) and is still answering
    wait_for(lambda: lab.ctl.packet_in() > before + sent // 10, 60, "packet-ins of the fuzzed frames")
    assert lab.switch.running(), lab.switch.log_tail()
    assert lab.ctl.alive() and lab.ctl.query_ok()
    # normal traffic still flows: ping, and a TCP transfer whose bytes arrive intact
    wait_for(lambda: lab.a.run("ping", "-c", "1", "-W", "2", B_ADDR, check=False).returncode == 0, 60,
             "ping A -> B after the fuzzed frames")
    srv = start_server(lab.b, TCP_SERVER, "0.0.0.0", "5003")
    try:
        client = lab.a.run(sys.executable, "-c", TCP_CLIENT, B_ADDR, "5003", str(256 * 1024), timeout=120)
    finally:
        stop(srv)
    _peer, count, got, want = client.stdout.strip().splitlines()[-1].split()
    assert count == str(256 * 1024) and got == want, client.stdout  # every byte arrived, intact
    assert lab.switch.running() and lab.ctl.alive()
