"""`offloadgen run --config router.toml [--switch ADDR] [--build DIR] [--target softswitch|bmv2]
[--tls-ca CA.pem [--tls-cert CLIENT.pem --tls-key CLIENT.key]]`.

Runs the controller in the foreground and serves its state on the status socket, where `offloadgen flows`,
`stats` and `entries` read it.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from runtime.config import load_config
from runtime.conntrack import format_conntrack
from runtime.controller import Controller
from runtime.errors import ConfigError
from runtime.kernel.slowpath import KernelOptions
from runtime.pipeline import TARGETS, load_build
from runtime.status import DEFAULT_SOCKET, StatusServer
from runtime.tls import TlsConfig

log = logging.getLogger("offloadgen.run")


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="run the controller: push the pipeline, slow path, flowtable and hardware offload")
    p.add_argument("--config", required=True, help="router config (TOML), e.g. configs/router.toml")
    p.add_argument("--switch", default="127.0.0.1:9559", help="the switch's P4Runtime address (default 127.0.0.1:9559)")
    p.add_argument("--build", default="build", help="offloadgen build output directory (default: build/)")
    p.add_argument("--target", choices=TARGETS, default="softswitch",
                   help="what the switch is: softswitch takes the P4 source, bmv2 the BMv2 JSON (default softswitch)")
    p.add_argument("--device-id", type=int, default=1, help="P4Runtime device id (default 1)")
    p.add_argument("--election-id", type=int, default=10,
                   help="arbitration election id, low 64 bits (default 10: backups such as p4runtime-shell with its "
                        "default 1 can then connect beside the controller and read)")
    p.add_argument("--connect-timeout", type=float, default=10.0,
                   help="seconds to wait for the switch's arbitration answer (default 10)")
    tls = p.add_argument_group("TLS", "the switch serves P4Runtime over TLS (simple_switch_grpc/softswitch "
                               "--grpc-server-ssl); mutual TLS when --tls-cert and --tls-key are given")
    tls.add_argument("--tls-ca", metavar="PEM", help="CA certificate that signed the switch's certificate; turns TLS on")
    tls.add_argument("--tls-cert", metavar="PEM", help="client certificate (for --grpc-server-with-client-auth)")
    tls.add_argument("--tls-key", metavar="PEM", help="the client certificate's private key")
    tls.add_argument("--tls-server-name", metavar="NAME",
                     help="name to check the switch's certificate against when it does not list the --switch host")
    p.add_argument("--status-socket", default=DEFAULT_SOCKET,
                   help=f"Unix socket for `offloadgen flows/stats/entries` (default {DEFAULT_SOCKET})")
    p.add_argument("--keep-entries", action="store_true",
                   help="leave offloaded flows on the switch at exit (a restarted controller adopts them); "
                        "by default a clean exit deletes them")
    p.add_argument("--slowpath", choices=("offloadgen", "kernel"), default="offloadgen",
                   help="what forwards the packets the switch punts: offloadgen's model of Linux's forward path "
                        "(default), or the Linux kernel itself in a router namespace (ports as TAPs, nftables, "
                        "conntrack over ctnetlink)")
    p.add_argument("--netns", default=None,
                   help="kernel slow path: the router namespace to use (default: offloadgen makes one per switch)")
    p.add_argument("--nft-ruleset", default=None,
                   help="kernel slow path: load this nftables file instead of the ruleset made from the config's [nat]")
    p.set_defaults(func=run)


def tls_config(args: argparse.Namespace) -> TlsConfig | None:
    """TLS is on when any TLS option is given; without --tls-ca the system's CA store verifies the switch."""
    if not (args.tls_ca or args.tls_cert or args.tls_key or args.tls_server_name):
        return None
    tls = TlsConfig(Path(args.tls_ca) if args.tls_ca else None, Path(args.tls_cert) if args.tls_cert else None,
                    Path(args.tls_key) if args.tls_key else None, args.tls_server_name)
    tls.check()
    return tls


def kernel_options(args: argparse.Namespace) -> KernelOptions | None:
    """The kernel slow path's options, or None for offloadgen's own; --netns/--nft-ruleset need it."""
    if getattr(args, "slowpath", "offloadgen") != "kernel":
        for opt in ("netns", "nft_ruleset"):
            if getattr(args, opt, None) is not None:
                raise ConfigError(f"--{opt.replace('_', '-')} belongs to the kernel slow path: add --slowpath kernel")
        return None
    return KernelOptions(netns=args.netns, nft_ruleset=args.nft_ruleset)


class BufferedStderr(logging.StreamHandler):
    """stderr logging that writes in blocks: at thousands of new connections a second, a write(2) per
    connection and flow transition line was a fifth of the worker thread's time. Warnings and errors are
    written at once; the rest when the controller's tick calls :meth:`sync` (every second) or at exit."""

    def __init__(self) -> None:
        super().__init__(io.TextIOWrapper(io.BufferedWriter(io.FileIO(os.dup(sys.stderr.fileno()), "w"), 1 << 16)))

    def flush(self) -> None:  # called by emit() after every record; the tick flushes instead
        pass

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        if record.levelno >= logging.WARNING:
            self.sync()

    def sync(self) -> None:
        self.acquire()
        try:
            self.stream.flush()
        finally:
            self.release()


def buffer_stderr_logging() -> BufferedStderr | None:
    """Swap the root logger's stderr handler (from ``logging.basicConfig``) for a :class:`BufferedStderr`."""
    root = logging.getLogger()
    for i, h in enumerate(root.handlers):
        if type(h) is logging.StreamHandler and h.stream is sys.stderr:
            buffered = BufferedStderr()
            buffered.setFormatter(h.formatter)
            buffered.setLevel(h.level)
            root.handlers[i] = buffered
            return buffered
    return None


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    tls = tls_config(args)
    kernel = kernel_options(args)
    pipeline = load_build(Path(args.build), args.target)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.warning("%s: stopping", signal.Signals(signum).name)
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    if not logging.getLogger().isEnabledFor(logging.INFO):
        logging.getLogger("runtime.controller").setLevel(logging.INFO)  # new connections are always logged
        logging.getLogger("offloadgen.run").setLevel(logging.INFO)
        logging.getLogger("runtime.offloader").setLevel(logging.INFO)  # [OFFLOAD] / [HW_OFFLOAD] transitions
        logging.getLogger("runtime.kernel.offload").setLevel(logging.INFO)  # the same with --slowpath kernel
        logging.getLogger("runtime.flows").setLevel(logging.INFO)  # how many of those lines a storm suppressed
    try:
        ctl = Controller(config, pipeline, args.switch, device_id=args.device_id,
                         election_id=(0, args.election_id), flush_on_stop=not args.keep_entries,
                         connect_timeout=args.connect_timeout, tls=tls, kernel=kernel)
        buffered = buffer_stderr_logging()
        if buffered is not None:
            ctl.on_tick.append(buffered.sync)
        status = StatusServer(args.status_socket)
        for name, handler in ctl.status_handlers().items():
            status.register(name, handler)
        with status, ctl:
            log.info("running: %d ports, %d static routes, slow path %s; Ctrl-C to stop", len(config.ports),
                     len(config.routes), "kernel (namespace " + ctl.kernel.ns.name + ")" if ctl.kernel else "offloadgen")
            ctl.wait(stop)
            table = format_conntrack(ctl.snapshot())
            if table:
                log.info("connections at exit:\n%s", table)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for root_handler in logging.getLogger().handlers:
            if isinstance(root_handler, BufferedStderr):
                root_handler.sync()
    return 0
