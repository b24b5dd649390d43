"""Small programs run inside the test hosts' namespaces, and helpers to start, stop and wait for them.

Shared by the integration tests (test_router_integration.py, test_flowtable_integration.py). The programs
are plain Python so a test host needs nothing but the interpreter: a TCP sink that answers with the peer
address, byte count and SHA-256 it saw, a client that sends random bytes (optionally paced), a UDP echo, and a
server and client for many connections opened and closed at once (selectors, one process each).
"""

from __future__ import annotations

import select
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from offloadgen.netlab import Host

TCP_SERVER = r"""
import hashlib, socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1)
print("ready", flush=True)
c, peer = s.accept(); h = hashlib.sha256(); n = 0
while True:
    b = c.recv(65536)
    if not b: break
    h.update(b); n += len(b)
c.sendall(f"{peer[0]} {n} {h.hexdigest()}".encode()); c.close()
"""

TCP_CLIENT = r"""
import hashlib, os, socket, sys, time
# host port size [pause]: send size random bytes in 64 KiB writes, sleeping pause seconds after each
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
data = os.urandom(int(sys.argv[3]))
pause = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
print("connected", c.getsockname()[1], flush=True)
for i in range(0, len(data), 65536):
    c.sendall(data[i:i + 65536])
    if pause:
        time.sleep(pause)
c.shutdown(socket.SHUT_WR)
reply = b""
while True:
    b = c.recv(4096)
    if not b: break
    reply += b
print(reply.decode(), hashlib.sha256(data).hexdigest())
"""

UDP_SERVER = r"""
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM); s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    b, peer = s.recvfrom(2048)
    if b == b"quit": break
    s.sendto(peer[0].encode() + b" " + b, peer)
"""

UDP_CLIENT = r"""
import socket, sys, time
# host port count pause [sport]: send count datagrams pause seconds apart from sport, print the answers
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(3)
s.bind(("0.0.0.0" if fam == socket.AF_INET else "::", int(sys.argv[5]) if len(sys.argv) > 5 else 40000))
answers = []
for i in range(int(sys.argv[3])):
    s.sendto(f"hello {i}".encode(), (sys.argv[1], int(sys.argv[2])))
    try:
        answers.append(s.recvfrom(2048)[0].decode())
    except socket.timeout:
        answers.append("timeout")
    time.sleep(float(sys.argv[4]))
print("\n".join(answers))
"""

MANY_SERVER = r"""
import resource, selectors, socket, sys
# host port: accept any number of TCP connections at once; answer each read with "ok", close when the peer does
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
sel = selectors.DefaultSelector()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(4096); s.setblocking(False)
sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        c = key.fileobj
        if c is s:
            try:
                c, _ = s.accept()
            except BlockingIOError:
                continue
            c.setblocking(False); sel.register(c, selectors.EVENT_READ)
            continue
        try:
            b = c.recv(4096)
        except BlockingIOError:
            continue
        except OSError:
            b = b""
        if b:
            c.send(b"ok\n")
        else:
            sel.unregister(c); c.close()
"""

MANY_CLIENT = r"""
import errno, resource, selectors, signal, socket, sys, time
# host port count [parallel]: in rounds, each started by SIGUSR1 (the first at once): open count connections
# (at most parallel handshakes at a time), say "hi" and read "ok" on each, print "open <n>"; on the next
# SIGUSR1 shut all of them down at once (a FIN each), wait for the peer's close, print "closed <n>"
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
parallel = int(sys.argv[4]) if len(sys.argv) > 4 else 100
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})

def open_all():
    sel = selectors.DefaultSelector(); ready = []; started = 0; busy = 0
    deadline = time.monotonic() + 120
    while (started < count or busy) and time.monotonic() < deadline:
        while started < count and busy < parallel:
            c = socket.socket(); c.setblocking(False)
            err = c.connect_ex((host, port))
            if err not in (0, errno.EINPROGRESS):
                c.close(); started += 1; continue
            sel.register(c, selectors.EVENT_WRITE, "connecting"); started += 1; busy += 1
        for key, _ in sel.select(1.0):
            c = key.fileobj
            if key.data == "connecting":
                if c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    sel.unregister(c); c.close(); busy -= 1; continue
                c.send(b"hi\n"); sel.modify(c, selectors.EVENT_READ, "answer")
            else:
                sel.unregister(c); busy -= 1
                try:
                    ok = c.recv(16) == b"ok\n"
                except OSError:
                    ok = False
                (ready.append(c) if ok else c.close())
    return ready

def close_all(conns):
    for c in conns:
        c.shutdown(socket.SHUT_WR)
    sel = selectors.DefaultSelector(); done = 0
    for c in conns:
        sel.register(c, selectors.EVENT_READ)
    deadline = time.monotonic() + 60
    while done < len(conns) and time.monotonic() < deadline:
        for key, _ in sel.select(1.0):
            try:
                b = key.fileobj.recv(16)
            except OSError:
                b = b""
            if not b:
                sel.unregister(key.fileobj); done += 1
    for c in conns:
        c.close()
    return done

while True:
    conns = open_all()
    print("open", len(conns), flush=True)
    signal.sigwait({signal.SIGUSR1})
    print("closed", close_all(conns), flush=True)
    signal.sigwait({signal.SIGUSR1})
"""


def read_line(proc: subprocess.Popen[str], timeout: float, what: str) -> str:
    """The next line a host app prints, waiting at most ``timeout`` (it prints one line per step)."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
    return proc.stdout.readline()


def assert_delivered(stdout: str, peer: str, size: int, why: str = "") -> None:
    """TCP_CLIENT's last line is TCP_SERVER's answer (the peer it saw, the bytes and their SHA-256) and the
    SHA-256 of what was sent: the server got exactly the data, from ``peer`` (after NAT, the router)."""
    got_peer, n, digest, sent = stdout.splitlines()[-1].split()
    assert (got_peer, int(n), digest) == (peer, size, sent), why or f"{size} bytes intact from {peer}"


def wait_for(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)



def start_server(host: Host, script: str, *args: str) -> subprocess.Popen[str]:
    proc = host.popen(sys.executable, "-c", script, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", f"server did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}"
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()



CAPTURE = r"""
import json, signal, socket, struct, sys
# port: the TCP packets of that port this host receives (not those it sends): how many (and their frame bytes),
# by DSCP and by VLAN id
# (0: untagged; the kernel hands a tag over in the packet's metadata, PACKET_AUXDATA), SYNs and FINs, and the
# socket's drops (PACKET_STATISTICS), so a capture that missed packets cannot pass for a complete one
port = int(sys.argv[1])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.setsockopt(socket.SOL_SOCKET, 33, 1 << 25)  # SO_RCVBUFFORCE: room for a whole burst
s.setsockopt(263, 8, 1)  # SOL_PACKET, PACKET_AUXDATA
s.bind(("eth0", 0))
s.settimeout(0.2)
done = []
signal.signal(signal.SIGTERM, lambda *_: done.append(1))
dscp, vids, n, nbytes, syn, fin = {}, {}, 0, 0, 0, 0
print("ready", flush=True)
while not done:
    try:
        frame, anc, _flags, addr = s.recvmsg(65535, 256)
    except TimeoutError:
        continue
    if addr[2] == socket.PACKET_OUTGOING:
        continue
    vid = 0
    for level, kind, data in anc:
        if level == 263 and kind == 8:
            status, _l, _s, _m, _n, tci, _tpid = struct.unpack_from("=IIIHHHH", data)
            if status & 0x10:  # TP_STATUS_VLAN_VALID
                vid = tci & 0xFFF
    l3, et = 14, struct.unpack_from("!H", frame, 12)[0]
    if et == 0x8100:
        vid, l3, et = struct.unpack_from("!H", frame, 14)[0] & 0xFFF, 18, struct.unpack_from("!H", frame, 16)[0]
    if et != 0x0800 or frame[l3 + 9] != 6:
        continue
    l4 = l3 + (frame[l3] & 0xF) * 4
    sp, dp = struct.unpack_from("!HH", frame, l4)
    if port not in (sp, dp):
        continue
    n += 1
    nbytes += len(frame)
    d = frame[l3 + 1] >> 2
    dscp[d] = dscp.get(d, 0) + 1
    vids[vid] = vids.get(vid, 0) + 1
    syn += bool(frame[l4 + 13] & 2)
    fin += bool(frame[l4 + 13] & 1)
_packets, drops = struct.unpack("II", s.getsockopt(263, 6, 8))  # SOL_PACKET, PACKET_STATISTICS
print(json.dumps({"packets": n, "bytes": nbytes, "dscp": dscp, "vid": vids, "syn": syn, "fin": fin, "drops": drops}), flush=True)
"""


def finish_capture(proc: subprocess.Popen[str]) -> dict[str, Any]:
    """Stop a CAPTURE and return its summary (DSCP keys as integers)."""
    import json

    proc.terminate()
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    summary: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    summary["dscp"] = {int(k): v for k, v in summary["dscp"].items()}
    summary["vid"] = {int(k): v for k, v in summary["vid"].items()}
    return summary
