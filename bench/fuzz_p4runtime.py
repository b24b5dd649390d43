"""Fuzz a switch's P4Runtime server and its data path, and report what happened.

Requests: 10,000 hostile requests by default (mutated Write / Read / Set- and GetForwardingPipelineConfig,
StreamChannel sequences, corrupted bytes; tests/softswitch/fuzzcases.py, seeded) against a switch process with
a primary attached. Counted per category: the status codes, answers slower than --slow seconds, handler
failures (UNKNOWN other than a batch's "Write failure.") and crashes (the switch process exited; it is
restarted, the pipeline re-pushed, and the run goes on).

Frames (needs root): 100,000 fuzzed frames from a host in a namespace into the switch with `offloadgen run`
attached (the lab of tests/runtime/test_flowtable_integration.py); then whether both processes are alive and
ping and a TCP transfer still work.

    .venv/bin/python bench/fuzz_p4runtime.py [--target softswitch|bmv2] [--requests 10000] [--frames 100000]
        [--seed 1] [--slow 5]

Prints a summary and writes bench/results/fuzz_p4runtime-<target>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import queue
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import text_format
from google.rpc import code_pb2
from p4.config.v1 import p4info_pb2
from p4.v1 import p4runtime_pb2, p4runtime_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "softswitch"))
sys.path.insert(0, str(REPO / "tests" / "runtime"))

from fuzzcases import CATEGORIES, Seeds, make_case, run_case  # noqa: E402

from offloadgen.build import build  # noqa: E402
from offloadgen.profile import load_profile  # noqa: E402
from offloadgen.switchproc import SwitchProcess, SwitchSpec, free_grpc_addr, free_port  # noqa: E402

DEVICE = 1
ELECTION = (0, 1)
HANG = 60.0  # a request not answered in this long counts as a hang (and ends in DEADLINE_EXCEEDED)


class Primary:
    """A StreamChannel that wins arbitration and then only listens."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._out: queue.Queue[p4runtime_pb2.StreamMessageRequest | None] = queue.Queue()
        self.arbitration: queue.Queue[Any] = queue.Queue()
        self._call = p4runtime_pb2_grpc.P4RuntimeStub(channel).StreamChannel(iter(self._out.get, None))
        threading.Thread(target=self._recv, daemon=True).start()
        req = p4runtime_pb2.StreamMessageRequest()
        req.arbitration.device_id = DEVICE
        req.arbitration.election_id.high, req.arbitration.election_id.low = ELECTION
        self._out.put(req)
        while True:
            msg = self.arbitration.get(timeout=30)
            if msg is None:
                raise RuntimeError("the switch ended the primary's stream")
            if msg.arbitration.status.code == code_pb2.OK:
                return

    def _recv(self) -> None:
        try:
            for msg in self._call:
                if msg.HasField("arbitration"):
                    self.arbitration.put(msg)
        except grpc.RpcError:
            pass
        self.arbitration.put(None)

    def close(self) -> None:
        self._out.put(None)


class Target:
    """A switch process with a channel, a primary and the pipeline pushed; restarted after a crash."""

    def __init__(self, kind: str, seeds: Seeds, log_dir: Path) -> None:
        self.kind = kind
        self.seeds = seeds
        self.spec = SwitchSpec(kind=kind, grpc_addr=free_grpc_addr(), device_id=DEVICE, cpu_port=255,  # type: ignore[arg-type]
                               log_file=log_dir / f"{kind}.log", thrift_port=free_port())
        self.sw: SwitchProcess | None = None
        self.channel: grpc.Channel | None = None
        self.primary: Primary | None = None
        self.restarts = 0

    def start(self) -> None:
        self.sw = SwitchProcess(self.spec).start()
        self.channel = grpc.insecure_channel(self.spec.grpc_addr)
        self.primary = Primary(self.channel)
        req = self.seeds.set_config()
        req.action = p4runtime_pb2.SetForwardingPipelineConfigRequest.VERIFY_AND_COMMIT
        p4runtime_pb2_grpc.P4RuntimeStub(self.channel).SetForwardingPipelineConfig(req, timeout=60)

    def alive(self) -> bool:
        return self.sw is not None and self.sw.running()

    def restart(self) -> str:
        tail = self.sw.log_tail(8) if self.sw is not None else ""
        self.stop()
        self.restarts += 1
        self.start()
        return tail

    def stop(self) -> None:
        if self.primary is not None:
            self.primary.close()
        if self.channel is not None:
            self.channel.close()
        if self.sw is not None:
            self.sw.stop()


def fuzz_requests(kind: str, build_dir: Path, n: int, seed: int, slow: float, log_dir: Path) -> dict[str, Any]:
    info = p4info_pb2.P4Info()
    text_format.Parse((build_dir / "p4info.txtpb").read_text(), info)
    config = (build_dir / ("flowtable.json" if kind == "bmv2" else "flowtable.p4")).read_bytes()
    seeds = Seeds.make(info, config, DEVICE, ELECTION)
    target = Target(kind, seeds, log_dir)
    target.start()
    rng = random.Random(seed)
    codes: dict[str, Counter[str]] = defaultdict(Counter)
    slow_answers: list[dict[str, Any]] = []
    crashes: list[dict[str, Any]] = []
    handler_failures: list[dict[str, Any]] = []
    times: list[float] = []
    start = time.monotonic()
    try:
        for i in range(n):
            case = make_case(seeds, rng)
            assert target.channel is not None
            answer = run_case(target.channel, case, HANG)
            codes[case.category][answer.code] += 1
            times.append(answer.seconds)
            where = {"index": i, "category": case.category, "method": case.method, "code": answer.code,
                     "details": answer.details[:200], "seconds": round(answer.seconds, 3)}
            if answer.seconds > slow:
                slow_answers.append(where)
            if answer.handler_failed and target.alive():
                handler_failures.append(where)
            if not target.alive():
                where["log"] = target.restart()
                crashes.append(where)
                print(f"  crash {len(crashes)} at request {i} ({case.category} {case.method}): {answer.code}",
                      flush=True)
            if (i + 1) % 1000 == 0:
                print(f"  {i + 1} requests, {len(crashes)} crashes, {len(slow_answers)} slow", flush=True)
    finally:
        target.stop()
    times.sort()
    return {
        "requests": n, "seconds": round(time.monotonic() - start, 1),
        "crashes": len(crashes), "crash_samples": crashes[:20],
        "crashes_by_category": dict(Counter(c["category"] for c in crashes)),
        "slow_answers": len(slow_answers), "slow_limit_s": slow, "slow_samples": slow_answers[:20],
        "handler_failures": len(handler_failures), "handler_failure_samples": handler_failures[:20],
        "answer_ms": {"p50": round(times[len(times) // 2] * 1000, 2), "p99": round(times[int(len(times) * 0.99)] * 1000, 2),
                      "max": round(times[-1] * 1000, 2)} if times else {},
        "codes": {c: dict(codes[c].most_common()) for c in CATEGORIES if c in codes},
    }


def fuzz_frames(kind: str, build_dir: Path, n: int, seed: int, tmp: Path) -> dict[str, Any]:
    from hostapps import TCP_CLIENT, TCP_SERVER, start_server, stop, wait_for
    from test_flowtable_integration import B_ADDR, make_config, run_lab

    sender = (REPO / "tests" / "softswitch" / "test_fuzz_datapath.py").read_text()
    script = sender.split('SENDER = r"""', 1)[1].split('"""', 1)[0]
    result: dict[str, Any] = {"frames": n}
    # run_lab prints the controller's log tail when the lab ends; the figures are what matters here
    with contextlib.redirect_stdout(io.StringIO()), \
            run_lab(kind, build_dir, make_config(REPO / "configs" / "router.toml", tmp), tmp) as lab:
        # the controller pushes the pipeline after its status socket is up: frames before that would only be
        # dropped by a switch without a program
        wait_for(lambda: lab.a.run("ping", "-c", "1", "-W", "2", B_ADDR, check=False).returncode == 0, 60,
                 "ping A -> B before the fuzzed frames")
        before = lab.ctl.packet_in()
        sent = refused = 0
        start = time.monotonic()
        chunk = 10_000
        for i in range(0, n, chunk):
            res = lab.a.run(sys.executable, "-c", script, str(REPO / "tests" / "softswitch"), lab.a.iface,
                            str(seed + i), str(min(chunk, n - i)), lab.a.mac.replace(":", ""), timeout=600)
            s, r = map(int, res.stdout.split())
            sent, refused = sent + s, refused + r
            if not lab.switch.running():
                break
        result.update(sent=sent, refused_by_kernel=refused, send_seconds=round(time.monotonic() - start, 1))
        result["switch_alive"] = lab.switch.running()
        try:
            result["controller_alive"] = lab.ctl.alive() and lab.ctl.query_ok()
        except AssertionError:
            result["controller_alive"] = False
        if result["switch_alive"] and result["controller_alive"]:
            # let the backlog drain: the packet-in count stops growing once the controller has caught up
            t, last = time.monotonic(), -1
            while (now := lab.ctl.packet_in()) != last and time.monotonic() - t < 120:
                last = now
                time.sleep(1.0)
            result["packet_ins"] = now - before
            result["drained_after_s"] = round(time.monotonic() - t, 1)
            t = time.monotonic()
            try:
                wait_for(lambda: lab.a.run("ping", "-c", "1", "-W", "2", B_ADDR, check=False).returncode == 0, 120,
                         "ping")
                result["ping_ok"] = True
            except AssertionError:
                result["ping_ok"] = False
            result["ping_back_after_s"] = round(time.monotonic() - t, 1)
            srv = start_server(lab.b, TCP_SERVER, "0.0.0.0", "5003")
            try:
                lines = lab.a.run(sys.executable, "-c", TCP_CLIENT, B_ADDR, "5003", str(1 << 20), timeout=180,
                                  check=False).stdout.strip().splitlines()
                out = lines[-1].split() if lines else []
                result["tcp_ok"] = len(out) == 4 and out[1] == str(1 << 20) and out[2] == out[3]
            finally:
                stop(srv)
        else:
            result["switch_log"] = lab.switch.log_tail(10)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", choices=("softswitch", "bmv2"), default="softswitch")
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--frames", type=int, default=100_000, help="0 to skip (the frame part needs root)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--slow", type=float, default=5.0, help="count answers slower than this many seconds")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    use_p4c = args.target == "bmv2"
    if use_p4c and shutil.which("p4c-bm2-ss") is None:
        sys.exit("fuzz_p4runtime: --target bmv2 needs p4c-bm2-ss and simple_switch_grpc on PATH")
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp_s:
        tmp = Path(tmp_s)
        build_dir = tmp / "build"
        build(load_profile(REPO / "profiles" / "default.toml"), build_dir, use_p4c=use_p4c)
        report: dict[str, Any] = {"target": args.target, "seed": args.seed, "machine": platform.machine(),
                                  "python": platform.python_version()}
        if args.requests:
            print(f"{args.target}: {args.requests} fuzzed requests", flush=True)
            report["p4runtime"] = fuzz_requests(args.target, build_dir, args.requests, args.seed, args.slow, tmp)
        if args.frames:
            if os.geteuid() != 0:
                print("frames skipped: the lab needs root", flush=True)
            else:
                print(f"{args.target}: {args.frames} fuzzed frames with the controller attached", flush=True)
                (tmp / "lab").mkdir()
                report["frames"] = fuzz_frames(args.target, build_dir, args.frames, args.seed, tmp / "lab")
    out = args.out or REPO / "bench" / "results" / f"fuzz_p4runtime-{args.target}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    p = report.get("p4runtime")
    if p:
        print(f"requests: {p['requests']} in {p['seconds']} s; crashes {p['crashes']} {p['crashes_by_category']}; "
              f"answers over {p['slow_limit_s']} s: {p['slow_answers']}; handler failures {p['handler_failures']}; "
              f"answer ms {p['answer_ms']}")
        for cat, codes in p["codes"].items():
            print(f"  {cat:11} {codes}")
    f = report.get("frames")
    if f:
        print(f"frames: {f}")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
