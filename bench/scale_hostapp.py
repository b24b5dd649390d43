"""Thousands of TCP connections from one process, for bench_flowtable_scale.py (run inside a host namespace).

    server ADDR PORT[,PORT...]             echo every byte back; print "ready" once listening
    client DST PORT[,PORT...] SRC[,SRC...] N INTERVAL HOLD OUT.json [CONCURRENT]
    udpsink ADDR PORT SECONDS              count datagrams for SECONDS after the first; answer "ping"s
    udpblast DST PORT RATE SECONDS         a "ping" until answered, then RATE datagrams/s for SECONDS

The client opens N connections (round robin over the source addresses and server ports, at most CONCURRENT
handshakes at a time, default 512). Each connection starts talking as soon as it is up: 16 bytes every INTERVAL seconds
(each at its own phase), checking the echo, so no connection is ever idle longer than INTERVAL, not even
while the others are still being opened (with a flow timeout above INTERVAL, any expiry is a false one).
A stall is the time from a send to its echo; the longest per connection is kept. Once all are up it prints
"connected N"; HOLD seconds later it closes them all (FIN), waits for the server's FIN and writes the
figures to OUT.json. One asyncio loop; RLIMIT_NOFILE is raised to fit.
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import socket
import sys
import time

CONCURRENT = 512
PER_SERVER = 15000  # sockets one server process is sized for (one process per port)
MSG = 16
IP_BIND_ADDRESS_NO_PORT = 24  # linux/in.h: pick the port at connect(), so one source address holds more


def raise_nofile(n: int) -> None:
    """Soft RLIMIT_NOFILE up to the hard limit; the bench splits the sockets over processes to fit it."""
    want = n + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if want > hard:
        sys.exit(f"scale_hostapp: {n} sockets need RLIMIT_NOFILE {want}, the hard limit is {hard}; "
                 "run more processes with fewer connections each")
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(4096):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def server(addr: str, ports: list[int]) -> None:
    raise_nofile(PER_SERVER)
    servers = [await asyncio.start_server(echo, addr, p, backlog=65535, reuse_address=True) for p in ports]
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


class Conn:
    __slots__ = ("connect_s", "echoed", "error", "max_stall", "reader", "sent", "stall_at", "writer")

    def __init__(self) -> None:
        self.max_stall = 0.0
        self.sent = 0
        self.echoed = 0
        self.error = ""
        self.connect_s = 0.0
        self.stall_at = 0.0  # when the longest stall began (time.monotonic())


async def open_one(dst: str, port: int, src: str, c: Conn, sem: asyncio.Semaphore) -> None:
    async with sem:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        s.bind((src, 0))
        s.setblocking(False)
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(s, (dst, port)), 60)
            c.reader, c.writer = await asyncio.open_connection(sock=s)
        except (TimeoutError, OSError) as exc:
            c.error = f"connect: {exc!r}"
            s.close()
        c.connect_s = time.monotonic() - t0


class Hold:
    """When the connections stop talking: unknown (never) until every connection is up."""

    def __init__(self) -> None:
        self.until = float("inf")


async def talk(c: Conn, interval: float, hold: Hold) -> None:
    """Send 16 bytes every `interval` s until the hold ends; keep the longest send-to-echo time."""
    if c.error:
        return
    await asyncio.sleep(random.uniform(0, interval))
    msg = bytes(random.getrandbits(8) for _ in range(MSG))
    try:
        while time.monotonic() < hold.until:
            t0 = time.monotonic()
            c.writer.write(msg)
            c.sent += 1
            # an echo may take until 30 s past the hold's end (120 s while the hold's end is not known yet)
            wait = 120.0 if hold.until == float("inf") else max(1.0, hold.until - t0 + 30)
            got = await asyncio.wait_for(c.reader.readexactly(MSG), wait)
            if got != msg:
                c.error = "echo differs"
                return
            c.echoed += 1
            if time.monotonic() - t0 > c.max_stall:
                c.max_stall, c.stall_at = time.monotonic() - t0, t0
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - t0)))
    except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
        c.error = f"talk: {exc!r}"
        if time.monotonic() - t0 > c.max_stall:
            c.max_stall, c.stall_at = time.monotonic() - t0, t0


async def close(c: Conn) -> None:
    writer = getattr(c, "writer", None)
    if writer is None:
        return
    try:
        writer.write_eof()
        await asyncio.wait_for(c.reader.read(), 30)  # the server's FIN
    except (TimeoutError, OSError):
        pass
    writer.close()


async def client(dst: str, ports: list[int], srcs: list[str], n: int, interval: float, hold: float,
                 out: str, concurrent: int = CONCURRENT) -> None:
    raise_nofile(n)
    sem = asyncio.Semaphore(concurrent)
    conns = [Conn() for _ in range(n)]
    stop = Hold()
    opened = 0
    all_open = asyncio.Event()

    async def life(i: int, c: Conn) -> None:
        nonlocal opened
        await open_one(dst, ports[i % len(ports)], srcs[(i // len(ports)) % len(srcs)], c, sem)
        opened += 1
        if opened == n:
            all_open.set()
        await talk(c, interval, stop)

    t0 = time.monotonic()
    lives = [asyncio.create_task(life(i, c)) for i, c in enumerate(conns)]
    await all_open.wait()
    connected_s = time.monotonic() - t0
    print(f"connected {sum(1 for c in conns if not c.error)}", flush=True)
    stop.until = time.monotonic() + hold
    await asyncio.gather(*lives)
    print("closing", flush=True)
    t1 = time.monotonic()
    await asyncio.gather(*(close(c) for c in conns))
    stalls = sorted(c.max_stall for c in conns)
    errors = [c.error for c in conns if c.error]
    res = {"n": n, "connected": n - sum(1 for c in conns if c.error.startswith("connect")),
           "connect_phase_s": connected_s, "close_phase_s": time.monotonic() - t1,
           "max_connect_s": max((c.connect_s for c in conns), default=0.0),
           "sent": sum(c.sent for c in conns), "echoed": sum(c.echoed for c in conns),
           "stalled_over_1s": sum(1 for s in stalls if s > 1.0), "max_stall_s": stalls[-1] if stalls else 0.0,
           "p99_stall_s": stalls[int(len(stalls) * 0.99)] if stalls else 0.0,
           "errors": len(errors), "error_samples": errors[:5],
           # when each stall over 1 s began, in seconds since the first connect (before or after "connected")
           "stalls_over_1s_began_s": sorted(round(c.stall_at - t0, 1) for c in conns if c.max_stall > 1.0)}
    with open(out, "w") as f:
        json.dump(res, f)
    print("done", flush=True)


def udpsink(addr: str, port: int, seconds: float) -> None:
    """Print how many datagrams arrived within SECONDS of the first data datagram (the blast)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind((addr, port))
    print("ready", flush=True)
    n, first, end = 0, 0.0, float("inf")
    s.settimeout(120)
    while True:
        try:
            b, peer = s.recvfrom(2048)
        except TimeoutError:
            break
        if b == b"ping":
            s.sendto(b"pong", peer)
            continue
        now = time.monotonic()
        if not n:
            first, end = now, now + seconds + 2  # the tail: what was in flight when the sender stopped
            s.settimeout(1.0)
        if now > end:
            break
        n += 1
    print(json.dumps({"received": n, "seconds": seconds, "first": first}), flush=True)


def udpblast(dst: str, port: int, rate: float, seconds: float) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.5)
    for _ in range(60):  # the router learns both ends and, for the fast path, conntrack sees a reply
        s.sendto(b"ping", (dst, port))
        try:
            if s.recvfrom(64)[0] == b"pong":
                break
        except TimeoutError:
            continue
    else:
        sys.exit("udpblast: no answer to ping")
    time.sleep(0.5)  # the flowtable offer happens on the reply; give it the next packet
    payload = b"x" * 18
    sent, t0 = 0, time.monotonic()
    burst = max(1, int(rate / 100))
    while (now := time.monotonic()) - t0 < seconds:
        due = int((now - t0) * rate)
        for _ in range(min(burst, due - sent)):
            s.sendto(payload, (dst, port))
            sent += 1
        if sent >= due:
            time.sleep(0.005)
    print(json.dumps({"sent": sent, "seconds": time.monotonic() - t0}), flush=True)


def main() -> None:
    if sys.argv[1] == "udpsink":
        udpsink(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
        return
    if sys.argv[1] == "udpblast":
        udpblast(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]))
        return
    if sys.argv[1] == "server":
        asyncio.run(server(sys.argv[2], [int(p) for p in sys.argv[3].split(",")]))
    else:
        _, _, dst, ports, srcs, n, interval, hold, out, *rest = sys.argv
        asyncio.run(client(dst, [int(p) for p in ports.split(",")], srcs.split(","), int(n), float(interval),
                           float(hold), out, int(rest[0]) if rest else CONCURRENT))


if __name__ == "__main__":
    main()
