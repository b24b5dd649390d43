"""The demo's traffic: small Python programs run inside the Mininet hosts, and their schedule.

Plain Python (no iperf) so that the receiver can report its byte count against the same monotonic clock the
demo samples the controller with: the throughput before and after a flow's [HW_OFFLOAD] moment is then a
matter of splitting one series at one time. Every program prints JSON lines; :class:`Proc` collects them.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

# The TCP receiver: its cumulative byte count every 0.1 s while data arrives (receiver-side throughput).
TCP_SINK = r"""
import json, socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1)
print(json.dumps({"ready": True}), flush=True)
c, peer = s.accept(); n = 0; last = 0.0
print(json.dumps({"t": time.monotonic(), "bytes": 0, "peer": peer[0], "sport": peer[1]}), flush=True)
while True:
    b = c.recv(262144)
    if not b: break
    n += len(b); now = time.monotonic()
    if now - last >= 0.1:
        print(json.dumps({"t": now, "bytes": n}), flush=True); last = now
print(json.dumps({"t": time.monotonic(), "bytes": n, "done": True}), flush=True)
c.close()
"""

# The TCP sender: sends for argv[3] seconds, then closes (FIN), so the flow's end is part of the demo.
TCP_SOURCE = r"""
import json, socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
print(json.dumps({"sport": c.getsockname()[1]}), flush=True)
buf = bytes(65536); n = 0; t0 = time.monotonic(); end = t0 + float(sys.argv[3])
while time.monotonic() < end:
    c.sendall(buf); n += len(buf)
c.shutdown(socket.SHUT_WR)
while c.recv(4096): pass
c.close()
print(json.dumps({"sent": n, "t0": t0, "t1": time.monotonic(), "done": True}), flush=True)
"""

UDP_ECHO = r"""
import json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", int(sys.argv[1])))
print(json.dumps({"ready": True}), flush=True)
while True:
    b, peer = s.recvfrom(2048)
    s.sendto(b, peer)
"""

# The UDP client: argv[4] datagrams a second for argv[3] seconds, counting the echoes.
UDP_CLIENT = r"""
import json, select, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 0)); s.setblocking(False)
print(json.dumps({"sport": s.getsockname()[1]}), flush=True)
dst = (sys.argv[1], int(sys.argv[2])); gap = 1.0 / float(sys.argv[4]); payload = bytes(200)
sent = got = 0; t0 = time.monotonic(); end = t0 + float(sys.argv[3]); nxt = t0
while True:
    now = time.monotonic()
    if now >= end + 1.0: break
    if now >= nxt and now < end:
        s.sendto(payload, dst); sent += 1; nxt += gap
    r, _, _ = select.select([s], [], [], max(0.0, min(nxt - now, 0.05)))
    while r:
        try: s.recv(2048); got += 1
        except BlockingIOError: break
print(json.dumps({"sent": sent, "received": got, "t0": t0, "t1": time.monotonic(), "done": True}), flush=True)
"""

# The receiver's view of the marks: every TCP/UDP packet this host receives (not those it sends), by flow
# (proto, sport, dport as they arrive) and DSCP; printed when stopped (SIGTERM), with the socket's drops.
DSCP_CAPTURE = r"""
import json, signal, socket, struct
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.setsockopt(socket.SOL_SOCKET, 33, 1 << 25)  # SO_RCVBUFFORCE
s.settimeout(0.2)
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
seen = {}
print(json.dumps({"ready": True}), flush=True)
while not stop:
    try:
        frame, addr = s.recvfrom(65535)
    except TimeoutError:
        continue
    if addr[2] == socket.PACKET_OUTGOING or addr[0] == "lo":
        continue
    l3, et = 14, struct.unpack_from("!H", frame, 12)[0]
    if et == 0x8100:
        l3, et = 18, struct.unpack_from("!H", frame, 16)[0]
    if et != 0x0800 or frame[l3 + 9] not in (6, 17):
        continue
    sp, dp = struct.unpack_from("!HH", frame, l3 + (frame[l3] & 0xF) * 4)
    key = ("tcp" if frame[l3 + 9] == 6 else "udp", sp, dp, frame[l3 + 1] >> 2)
    seen[key] = seen.get(key, 0) + 1
_n, drops = struct.unpack("II", s.getsockopt(263, 6, 8))  # SOL_PACKET, PACKET_STATISTICS
print(json.dumps({"dscp_seen": [[*k, n] for k, n in sorted(seen.items())], "drops": drops, "done": True}), flush=True)
"""


@dataclass
class Proc:
    """A program in a host; a thread collects its JSON lines (other output is kept as text for errors)."""

    name: str
    popen: subprocess.Popen[str]
    lines: list[dict[str, Any]] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    def __post_init__(self) -> None:
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, name=f"read-{self.name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            try:
                obj = json.loads(line)
            except ValueError:
                self.text.append(line.rstrip())
                continue
            if isinstance(obj, dict):
                self.lines.append(obj)
                if obj.get("ready"):
                    self._ready.set()
            else:
                self.text.append(line.rstrip())
        self._ready.set()

    def wait_ready(self, timeout: float = 10.0) -> bool:
        return self._ready.wait(timeout) and any(x.get("ready") for x in self.lines)

    def first(self, key: str) -> Any:
        return next((x[key] for x in self.lines if key in x), None)

    def done(self) -> dict[str, Any] | None:
        return next((x for x in self.lines if x.get("done")), None)

    def stderr_text(self) -> str:
        if self.popen.poll() is None or self.popen.stderr is None:
            return ""
        with contextlib.suppress(ValueError, OSError):
            return self.popen.stderr.read().strip()
        return ""

    def wait(self, timeout: float) -> bool:
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        if self._reader is not None:
            self._reader.join(2.0)
        return True

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(3)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        if self._reader is not None:
            self._reader.join(2.0)


class Programs:
    """Every program started in a host, so that clean-up can stop all of them (mnexec detaches them from our
    terminal, so neither Ctrl-C nor Mininet's own stop reaches them)."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []

    def start(self, host: Any, name: str, argv: list[str]) -> Proc:
        popen = host.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        proc = Proc(name, popen)
        self.procs.append(proc)
        return proc

    def python(self, host: Any, name: str, script: str, *args: str) -> Proc:
        return self.start(host, name, [sys.executable, "-u", "-c", script, *args])

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop()


@dataclass(frozen=True)
class Schedule:
    """When each part of the traffic runs, in seconds from the demo's t=0, scaled to the duration.

    The slow-path baseline runs alone first, so that its throughput is not shared with the offloaded
    transfer; the offloaded transfer and the UDP exchange then run together; the pings run throughout.
    What is left of the duration after the traffic is spent watching the flows leave the flowtable.
    """

    duration: float
    baseline_start: float
    baseline_len: float
    offload_start: float
    offload_len: float
    udp_pps: float = 50.0
    ping_interval: float = 0.5

    @property
    def traffic_end(self) -> float:
        return self.offload_start + self.offload_len

    @classmethod
    def for_duration(cls, duration: float) -> Schedule:
        baseline_len = min(10.0, max(3.0, round(0.15 * duration, 1)))
        offload_len = min(15.0, max(5.0, round(0.25 * duration, 1)))
        baseline_start = 0.5
        offload_start = baseline_start + baseline_len + 1.0
        return cls(duration, baseline_start, baseline_len, offload_start, offload_len)
