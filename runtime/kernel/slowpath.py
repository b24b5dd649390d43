"""The kernel slow path: what the controller uses in place of :class:`runtime.slowpath.SlowPath` with
``--slowpath kernel``.

A punted frame is written to its port's TAP and the kernel does the rest -- ARP/ND, routing, conntrack,
NAT, ICMP errors, fragmentation, TTL, PMTU; frames the kernel sends on a TAP leave as packet-outs. The
switch's punt reason is only counted: the kernel decides. Conntrack events are read on their own thread
and handed to the listeners (the kernel offloader).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import selectors
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from ..config import RouterConfig
from ..flowtable.policy import FlowtableConfig
from .ctnetlink import CtNetlink, KCt, KEvent
from .netns import KernelError, NetNs
from .nft import load_ruleset
from .rtnl import Rtnl
from .tap import TapSet

log = logging.getLogger(__name__)

CtListener = Callable[[KEvent, KCt], None]


@dataclass(frozen=True, slots=True)
class KernelOptions:
    """``--netns`` (None: offloadgen's own namespace for this switch) and ``--nft-ruleset``."""

    netns: str | None = None
    nft_ruleset: str | None = None


def default_netns(switch_address: str, device_id: int) -> str:
    """The namespace offloadgen makes for one switch; a restarted controller finds it by the same name."""
    return "ogk-" + hashlib.sha1(f"{switch_address}/{device_id}".encode()).hexdigest()[:10]


class KernelSlowPath:
    def __init__(self, config: RouterConfig, options: KernelOptions, emit: Callable[[int, bytes], None], *,
                 default_name: str) -> None:
        self.config = config
        self.options = options
        self.emit = emit
        self.own_netns = options.netns is None
        self.ns = NetNs(options.netns or default_name)
        self.stats: Counter[str] = Counter()
        self.ct_stats: Counter[str] = Counter()
        self.listeners: list[CtListener] = []
        self.on_resync: list[Callable[[list[KCt]], None]] = []
        self.taps: TapSet | None = None
        self.ct: CtNetlink | None = None
        self.rtnl: Rtnl | None = None
        self.ruleset = ""
        #: the [flowtable] policy whose statements the generated ruleset applies (set by the kernel offloader)
        self.policy: FlowtableConfig | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> KernelSlowPath:
        """Namespace, TAPs, addresses and routes, the ruleset, netlink sockets; errors are
        :class:`KernelError` naming the part and the fix."""
        if not self.ns.ensure().created:
            log.info("kernel slow path: using the existing namespace %s", self.ns.name)
        try:
            self.taps = TapSet(self.ns, self.config, self._from_kernel).open()
            self.ruleset = load_ruleset(self.ns, self.config, self.options.nft_ruleset, self.policy)
            with contextlib.suppress(KernelError, OSError):
                self.ns.sysctl("net.netfilter.nf_conntrack_acct", 1)  # byte counts for conntrack -L
            self.ct = CtNetlink(self.ns.name)
            self.rtnl = Rtnl(self.ns.name)
        except BaseException:
            self.close(keep=False)
            raise
        log.info("kernel slow path: namespace %s, TAPs %s%s", self.ns.name,
                 ", ".join(t.name for t in self.taps.taps.values()), " (re-attached)" if self.taps.reattached else "")
        return self

    def start(self) -> None:
        assert self.taps is not None
        self.taps.start()
        self._stop.clear()
        self._thread = threading.Thread(target=self._ct_loop, name="ctnetlink", daemon=True)
        self._thread.start()

    def close(self, *, keep: bool) -> None:
        """Stop the threads; without ``keep`` remove the TAPs (and the namespace when it is offloadgen's),
        with it leave everything so a restarted controller adopts the kernel's connections."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.taps is not None:
            self.taps.close(keep=keep)
            self.taps = None
        for part in (self.ct, self.rtnl):
            if part is not None:
                part.close()
        self.ct = self.rtnl = None
        if not keep:
            if self.own_netns:
                self.ns.delete()
            else:
                self.ns.run(["nft", "delete", "table", "inet", "offloadgen"], check=False)

    # ------------------------------------------------------------------ packets

    def handle(self, in_port: int, frame: bytes, reason: str = "") -> None:
        """A punted frame: into the kernel on ``in_port``'s TAP."""
        self.stats["rx"] += 1
        if reason:
            self.stats[f"reason_{reason.lower()}"] += 1
        if self.taps is None or not self.taps.write(in_port, frame):
            self.stats["drop_tap"] += 1
            return
        self.stats["to_kernel"] += 1

    def _from_kernel(self, port: int, frame: bytes) -> None:
        self.stats["from_kernel"] += 1
        self.emit(port, frame)

    def tick(self) -> None:
        pass

    # ------------------------------------------------------------------ conntrack events

    def _ct_loop(self) -> None:
        ct = self.ct
        assert ct is not None
        sel = selectors.DefaultSelector()
        sel.register(ct.events, selectors.EVENT_READ)
        try:
            while not self._stop.is_set():
                if not sel.select(timeout=0.5):
                    continue
                try:
                    events = ct.read_events()
                except OSError as exc:
                    log.warning("reading conntrack events: %s", exc)
                    continue
                if events is None:
                    log.warning("conntrack events were lost (socket overrun): resynchronising from a dump")
                    self.resync()
                    continue
                for ev, k in events:
                    self.ct_stats[ev.value.lower()] += 1
                    for fn in self.listeners:
                        try:
                            fn(ev, k)
                        except Exception:
                            log.exception("handling conntrack %s of %s failed", ev.value, k.orig)
        finally:
            sel.close()

    def resync(self) -> None:
        if self.ct is None:
            return
        entries = self.ct.dump()
        for fn in self.on_resync:
            fn(entries)

    def dump(self) -> list[KCt]:
        return self.ct.dump() if self.ct is not None else []
