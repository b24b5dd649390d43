"""Policy statements seen at the receiving hosts: a DSCP mark and a named counter on every packet of a
connection, whichever path carries it, over its whole life (slow path, [OFFLOAD], [HW_OFFLOAD], closing,
slow path again).

Hosts A (lan1, behind masquerade) and B (wan) capture every TCP packet of the connection they receive. The
policy (configs/router.toml with its [flowtable] replaced) says: TCP to port 5002 from lan1 to wan is offloaded,
marked cs3 and counted as "web" (in both directions: the rule looks at the original direction, so the replies
coming in on wan are marked too). With the default profile the switch marks and counts once the flow is [HW_OFFLOAD]; with a
profile built without [features] dscp the switch cannot mark, so the flow stays on the software fast path
(hw_unsupported, the statement shown as the reason) -- and still every packet is marked. Either way the named
counter equals the packets the two hosts received. Runs on softswitch and BMv2, each with offloadgen's slow
path and with the Linux kernel's (`--slowpath kernel`: the generated nftables ruleset marks and counts what
the kernel forwards; the kernel has no software fast path, so with the no-dscp profile it carries the whole
connection and marks every packet itself).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostapps import CAPTURE, TCP_CLIENT, TCP_SERVER, assert_delivered, finish_capture, start_server, stop, wait_for
from test_flowtable_integration import LABS, Lab, offloadgen, run_lab

from offloadgen.build import build
from offloadgen.profile import load_profile, shipped_profile

pytestmark = [pytest.mark.root, pytest.mark.slow]

B_ADDR = "192.0.2.20"
WAN_ADDR = "192.0.2.1"
CS3 = 24
PORT = 5002

FLOWTABLE = f"""
[flowtable]
ports = ["lan1", "lan2", "lan3", "wan"]
close_timeout = 3

[[flowtable.rules]]
action = "offload"
proto = "tcp"
dport = {PORT}
iif = "lan1"
oif = "wan"
set = {{ dscp = "cs3" }}
counter = "web"
"""


def make_config(router_config_path: Path, tmp: Path) -> Path:
    text = router_config_path.read_text()
    path = tmp / "router.toml"
    path.write_text(text[:text.index("\n[flowtable]")] + "\n" + FLOWTABLE)
    return path


@pytest.fixture(scope="module", params=["dscp", "no-dscp"])
def variant_build(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    profile = load_profile(shipped_profile("default"))
    if request.param == "no-dscp":
        profile = dataclasses.replace(profile, dscp=False)
    out = tmp_path_factory.mktemp(f"build-{request.param}")
    build(profile, out, use_p4c=shutil.which("p4c-bm2-ss") is not None)
    return request.param, out


@pytest.fixture(params=LABS)
def slab(request: pytest.FixtureRequest, variant_build: tuple[str, Path], router_config_path: Path,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Lab]]:
    variant, build_dir = variant_build
    kind, slowpath = request.param
    tmp = tmp_path_factory.mktemp(f"stmt-{variant}-{kind}-{slowpath}")
    with run_lab(kind, build_dir, make_config(router_config_path, tmp), tmp, slowpath) as lab:
        yield variant, lab


def test_every_packet_marked_and_counted_over_the_whole_life(slab: tuple[str, Lab]) -> None:
    variant, lab = slab
    captures = []
    for host in (lab.a, lab.b):
        cap = host.popen(sys.executable, "-c", CAPTURE, str(PORT), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert cap.stdout is not None and cap.stdout.readline().strip() == "ready"
        captures.append(cap)
    srv = start_server(lab.b, TCP_SERVER, "0.0.0.0", str(PORT))
    size = 6 * 1024 * 1024
    # paced (~4 s) so that the flow is still offloaded while the test looks at it
    client = lab.a.popen(sys.executable, "-c", TCP_CLIENT, B_ADDR, str(PORT), str(size), "0.04",
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert client.stdout is not None
        sport = int(client.stdout.readline().split()[1])
        if variant == "dscp":
            flow = lab.ctl.wait_flow("tcp", PORT, sport=sport, timeout=10, what="the marked flow to reach [HW_OFFLOAD]")
            entries = [e for e in lab.ctl.entries() if e["flow"] == flow["id"]]
            assert len(entries) == 2 and all(e["action"] == "offload_nat_stmt" and e["params"]["dscp"] == CS3
                                             and e["params"]["set_dscp"] == 1 and e["params"]["counter_idx"] == 1
                                             for e in entries), entries
            shown = offloadgen("flows", "--status-socket", str(lab.ctl.sock)).stdout
            assert "orig_statements=dscp=cs3@switch,counter=web@switch" in shown, shown
            listed = offloadgen("entries", "--status-socket", str(lab.ctl.sock)).stdout
            assert "offload_nat_stmt(" in listed and "set_dscp=1 dscp=24 counter_idx=1" in listed, listed
        else:
            flow = lab.ctl.wait_flow("tcp", PORT, sport=sport, state="offloaded", timeout=10,
                                     what="the flow to be in the software flowtable")
            wait_for(lambda: lab.ctl.stats()["flowtable"]["counters"]["hw_unsupported"] >= 1, 5,
                     "the switch to be found unable to mark it")
            flow = lab.ctl.flow("tcp", PORT, sport=sport) or flow
            assert flow["tag"] == "[OFFLOAD]" and flow["last_error"].startswith("dscp=cs3: the switch cannot set DSCP")
            shown = offloadgen("flows", "--status-socket", str(lab.ctl.sock)).stdout
            assert "orig_statements=dscp=cs3@software,counter=web@software" in shown, shown
        stdout, stderr = client.communicate(timeout=120)
        assert client.returncode == 0, stderr
        assert_delivered(stdout, WAN_ADDR, size)
        # closing, then off the flowtable: the last packets took the slow path again
        wait_for(lambda: lab.ctl.flow("tcp", PORT, sport=sport) is None, 10, "the closed flow to leave the flowtable")
        assert not [e for e in lab.ctl.entries() if e["flow"] == flow["id"]]
    finally:
        if client.poll() is None:
            client.kill()
        stop(srv)
        summaries = [finish_capture(c) for c in captures]
    at_a, at_b = summaries
    for where, s in (("A", at_a), ("B", at_b)):
        assert s["drops"] == 0, f"the capture at {where} missed packets: {s}"
        assert s["dscp"] == {CS3: s["packets"]}, f"at {where} every packet carries cs3: {s}"
        assert s["syn"] >= 1 and s["fin"] >= 1, f"{where} saw the whole life, handshake to close: {s}"
    assert at_b["packets"] > 4000, "6 MiB of data segments reached B"
    stats = lab.ctl.stats()
    web = stats["flowtable"]["named_counters"]["web"]
    assert web["packets"] == at_a["packets"] + at_b["packets"], (web, at_a, at_b)
    # and their bytes: frames as the switch counts them (the router's rewrites do not change a frame's length)
    assert web["bytes"] == at_a["bytes"] + at_b["bytes"], (web, at_a, at_b)
    ctl = stats["controller"]
    if variant == "dscp":
        assert ctl["hw_packets"] > 1000, "the switch carried (and marked) most of it"
    elif lab.slowpath == "kernel":
        assert ctl["to_kernel"] > 1000, "the kernel carried (and marked) all of it"
        assert stats["flowtable"]["counters"]["hw_unsupported"] >= 1
    else:
        assert ctl["fastpath_packets"] > 1000, "the software fast path carried (and marked) most of it"
        assert stats["flowtable"]["counters"]["hw_unsupported"] >= 1
    if lab.slowpath == "kernel":
        # the kernel's share is its own nft counter, in the router namespace
        from runtime.kernel.slowpath import default_netns

        ns = default_netns(lab.switch.grpc_addr, 1)
        listed = subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "list", "counter", "inet", "offloadgen", "web"],
                                capture_output=True, text=True, check=True).stdout
        kernel_packets = json.loads(listed)["nftables"][1]["counter"]["packets"]
        assert 0 < kernel_packets <= web["packets"], (kernel_packets, web)
        if variant == "no-dscp":
            assert kernel_packets == web["packets"], "no switch counter: all of it is the kernel's"
    text = offloadgen("stats", "--status-socket", str(lab.ctl.sock)).stdout
    assert re.search(rf"counter web\s+packets\s+{web['packets']} ", text), text


def test_restarted_controller_adopts_a_marked_flow_with_its_statements(slab: tuple[str, Lab]) -> None:
    """SIGKILL the controller mid-transfer. With entries on the switch, the switch goes on marking and the
    restarted controller rebuilds the connection from them with the policy's statements, so the entries
    match and stay. Without (the no-dscp profile), the restarted controller picks the connection up mid-stream
    from its packets, with the statements again. Either way no packet arrives unmarked."""
    variant, lab = slab
    cap = lab.b.popen(sys.executable, "-c", CAPTURE, str(PORT), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert cap.stdout is not None and cap.stdout.readline().strip() == "ready"
    srv = start_server(lab.b, TCP_SERVER, "0.0.0.0", str(PORT))
    size = 6 * 1024 * 1024
    client = lab.a.popen(sys.executable, "-c", TCP_CLIENT, B_ADDR, str(PORT), str(size), "0.05",
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert client.stdout is not None
        sport = int(client.stdout.readline().split()[1])
        state = "hw_offloaded" if variant == "dscp" else "offloaded"
        lab.ctl.wait_flow("tcp", PORT, sport=sport, state=state, timeout=10, what="the marked flow to be offloaded")
        lab.ctl.kill()
        lab.ctl.start()
        after = lab.ctl.wait_flow("tcp", PORT, sport=sport, state=state, timeout=10,
                                  what="the restarted controller to take the flow again")
        where = "switch" if variant == "dscp" else "software"
        assert after["orig"]["statements"] == f"dscp=cs3@{where},counter=web@{where}", after
        st = lab.ctl.stats()["flowtable"]
        if variant == "dscp":
            assert st["rebuilt"] >= 1 and st["counters"]["hw_unsupported"] == 0, st
            entries = [e for e in lab.ctl.entries() if e["flow"] == after["id"]]
            assert len(entries) == 2 and all(e["params"]["dscp"] == CS3 for e in entries), entries
        stdout, stderr = client.communicate(timeout=120)
        assert client.returncode == 0, stderr
        assert stdout.splitlines()[-1].split()[1] == str(size)
    finally:
        if client.poll() is None:
            client.kill()
        stop(srv)
        seen = finish_capture(cap)
    assert seen["drops"] == 0 and seen["dscp"] == {CS3: seen["packets"]}, seen
