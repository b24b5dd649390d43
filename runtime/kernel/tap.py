"""Switch ports as TAP interfaces in the router namespace, and the thread that carries their frames.

Each port of the router config becomes a TAP named after the port, with the port's MAC, MTU and addresses;
the config's static routes are added beside the connected ones. A frame punted by the switch from port P
is written to P's TAP (the kernel receives it on that interface); every frame the kernel sends on a TAP
is handed to ``on_frame(P, frame)`` (a packet-out on P).

The TAPs are persistent (``TUNSETPERSIST``) and carry an ``ifalias`` naming the port, so a controller that
was killed leaves them, their addresses and the kernel's connections in place, and its successor attaches to
them again -- like a driver reloading under a running kernel. An interface of the same name without that
mark is someone else's: that is an error, not something to take over.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import selectors
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..config import PortConfig, RouterConfig
from ..entities import mac_str
from .netns import KernelError, NetNs, in_netns

log = logging.getLogger(__name__)

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
MARK = "offloadgen port {port}"
MAX_FRAME = 65536


@dataclass(slots=True)
class Tap:
    port: int
    name: str
    fd: int
    ifindex: int = 0


def _open_tap(name: str) -> int:
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise KernelError(f"cannot open /dev/net/tun: {exc.strerror} (the kernel slow path needs TAP support: "
                          "load the tun module, run as root)") from None
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI))
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
    except OSError as exc:
        os.close(fd)
        hint = (" (another controller is attached to it: stop that one, or give this one another --netns)"
                if exc.errno == errno.EBUSY else "")
        raise KernelError(f"cannot create TAP {name!r}: {exc.strerror}{hint}") from None
    return fd


class TapSet:
    """The router's ports as TAPs in ``ns``. A context manager; :meth:`close` removes the TAPs unless
    ``keep`` (then a restarted controller finds them as they were)."""

    def __init__(self, ns: NetNs, config: RouterConfig, on_frame: Callable[[int, bytes], None]) -> None:
        self.ns = ns
        self.config = config
        self.on_frame = on_frame
        self.taps: dict[int, Tap] = {}
        self.by_ifindex: dict[int, int] = {}
        self.rx_frames = 0
        self.tx_frames = 0
        self.tx_errors = 0
        self.reattached = False
        self._sel: selectors.DefaultSelector | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe()

    # ------------------------------------------------------------------ set-up

    def _existing(self) -> dict[str, dict[str, object]]:
        r = self.ns.ip("-j", "link", "show", what="listing interfaces")
        return {str(x["ifname"]): x for x in json.loads(r.stdout or "[]")}

    def open(self) -> TapSet:
        ns = self.ns
        for key, value in (("net.ipv4.ip_forward", 1), ("net.ipv6.conf.all.forwarding", 1),
                           ("net.ipv6.conf.default.accept_dad", 0), ("net.ipv4.conf.all.rp_filter", 0),
                           ("net.ipv4.conf.default.rp_filter", 0), ("net.ipv4.conf.all.send_redirects", 0),
                           ("net.ipv4.conf.default.send_redirects", 0)):
            ns.sysctl(key, value)
        ns.ip("link", "set", "lo", "up")
        existing = self._existing()
        for p in sorted(self.config.ports.values(), key=lambda p: p.port):
            have = existing.get(p.name)
            if have is not None and have.get("ifalias") != MARK.format(port=p.port):
                raise KernelError(f"{self.config.source}: port {p.name!r}: an interface of that name already exists "
                                  f"in namespace {ns.name!r} and is not offloadgen's TAP for port {p.port}; "
                                  "rename the port or use another --netns")
            fd = in_netns(ns.name, lambda name=p.name: _open_tap(name))  # type: ignore[misc]
            self.taps[p.port] = Tap(p.port, p.name, fd)
            if have is not None:
                self.reattached = True
            self._configure(p, fresh=have is None)
        for ifc in json.loads(ns.ip("-j", "link", "show").stdout or "[]"):
            for tap in self.taps.values():
                if ifc["ifname"] == tap.name:
                    tap.ifindex = int(ifc["ifindex"])
                    self.by_ifindex[tap.ifindex] = tap.port
        for i, r in enumerate(self.config.routes):
            argv = ["route", "replace", str(r.dst)]
            if r.via is not None:
                argv += ["via", str(r.via)]
            if r.port is not None:
                argv += ["dev", self.config.ports[r.port].name]
            ns.ip(*argv, what=f"{self.config.source}: routes[{i}] ({' '.join(argv[2:])}): the kernel refused it;")
        return self

    def _configure(self, p: PortConfig, *, fresh: bool) -> None:
        """MAC, MTU, addresses. A re-attached TAP is not taken down and keeps its addresses: the kernel
        flushes masqueraded connections when their interface goes down or loses its address
        (``masq_device_event``, ``masq_inet_event``), and those are the connections to adopt."""
        ns, src = self.ns, self.config.source
        if fresh:
            ns.ip("link", "set", "dev", p.name, "down")
        ns.ip("link", "set", "dev", p.name, "address", mac_str(p.mac), "mtu", str(p.mtu),
              what=f"{src}: port {p.name!r}: setting MAC {mac_str(p.mac)} and MTU {p.mtu}")
        ns.ip("link", "set", "dev", p.name, "alias", MARK.format(port=p.port))
        ns.sysctl(f"net.ipv6.conf.{p.name}.accept_dad", 0)
        ns.ip("link", "set", "dev", p.name, "up")
        for a in p.ipv4:
            ns.ip("addr", "replace", str(a), "dev", p.name, what=f"{src}: port {p.name!r}: address {a}")
        for a6 in p.ipv6:
            if not a6.ip.is_link_local:
                ns.ip("addr", "replace", str(a6), "dev", p.name, "nodad", what=f"{src}: port {p.name!r}: address {a6}")

    # ------------------------------------------------------------------ I/O

    def start(self) -> None:
        self._sel = selectors.DefaultSelector()
        for tap in self.taps.values():
            self._sel.register(tap.fd, selectors.EVENT_READ, tap.port)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="tap-io", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self._sel is not None
        while not self._stop.is_set():
            for key, _ in self._sel.select(timeout=1.0):
                if key.data is None:
                    with contextlib.suppress(OSError):
                        os.read(self._wake_r, 64)
                    continue
                port: int = key.data
                fd = key.fd
                for _ in range(64):  # drain a burst, then look at the other TAPs again
                    try:
                        frame = os.read(fd, MAX_FRAME)
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        log.warning("reading TAP of port %d: %s", port, exc)
                        break
                    self.rx_frames += 1
                    try:
                        self.on_frame(port, frame)
                    except Exception:
                        log.exception("sending a frame from the kernel out of port %d failed", port)

    def write(self, port: int, frame: bytes) -> bool:
        """Give ``frame`` to the kernel as received on ``port``; False when the port has no TAP or the
        TAP's queue is full (the kernel would drop it too)."""
        tap = self.taps.get(port)
        if tap is None:
            return False
        try:
            os.write(tap.fd, frame)
        except OSError as exc:
            self.tx_errors += 1
            if exc.errno not in (errno.EAGAIN, errno.EIO):
                log.debug("writing to TAP %s: %s", tap.name, exc)
            return False
        self.tx_frames += 1
        return True

    def close(self, *, keep: bool = False) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._sel is not None:
            self._sel.close()
            self._sel = None
        for tap in self.taps.values():
            if not keep:
                with contextlib.suppress(OSError):
                    fcntl.ioctl(tap.fd, TUNSETPERSIST, 0)
            os.close(tap.fd)
        self.taps.clear()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
