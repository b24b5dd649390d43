"""`softswitch`: a P4Runtime switch whose command line mirrors BMv2's `simple_switch_grpc`.

    softswitch --device-id 1 -i 1@veth1 -i 2@veth3 --no-p4 [--log-console -L info] \\
        -- --grpc-server-addr 127.0.0.1:9559 --cpu-port 255

so that a topology can start one or the other with the same argv. Differences: the program, when given
instead of --no-p4, is the P4 source (flowtable.p4 from `offloadgen build`), not a BMv2 JSON; the gRPC server
binds to loopback by default (BMv2: 0.0.0.0); the default log level is info (BMv2: trace). Options of
simple_switch_grpc that have no meaning here (--thrift-port, --nanolog, --notifications-addr, --log-flush,
--max-port-count) are accepted and ignored, so existing scripts keep working; unsupported ones that would
change behaviour (--pcap, --use-files, --restore-state, --packet-in) are refused.
"""

from __future__ import annotations

import argparse
import gc
import logging
import signal
import ssl
import sys
import threading
from pathlib import Path
from typing import NoReturn

from softswitch.p4runtime.schema import P4RuntimeError
from softswitch.ports import Port, PortError, TxBatching, open_port, parse_port_spec, port_summary
from softswitch.server import (
    DEFAULT_MAX_STREAMS,
    PACKET_IN_QUEUE,
    TRACE,
    ServerStartError,
    SoftSwitch,
    TlsOptions,
    serve,
)

log = logging.getLogger("softswitch")

LEVELS = {"trace": TRACE, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
          "warning": logging.WARNING, "error": logging.ERROR, "critical": logging.CRITICAL, "off": logging.CRITICAL + 10}


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def general_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="softswitch", add_help=True,
                description="P4Runtime software switch running a generated P4 program (simple_switch_grpc-compatible "
                            "command line; target options go after --, see `softswitch -- --help`).")
    p.add_argument("program", nargs="?", help="P4 source to run at start (flowtable.p4); or use --no-p4")
    p.add_argument("-i", "--interface", action="append", default=[], metavar="N@IFACE",
                   help="attach Linux interface IFACE as P4 port N (repeatable)")
    p.add_argument("--device-id", type=int, default=0, help="P4Runtime device id (default 0, as BMv2)")
    p.add_argument("--no-p4", action="store_true", help="start without a program; a controller pushes one")
    p.add_argument("--log-console", action="store_true", help="log to stdout")
    p.add_argument("--log-file", help="log to this file")
    p.add_argument("-L", "--log-level", default="info", choices=sorted(LEVELS), help="default info")
    p.add_argument("--dump-packet-data", type=int, default=0, metavar="N",
                   help="log the first N bytes of every packet in and out (level info)")
    p.add_argument("-v", "--version", action="store_true", help="print the version and exit")
    for ignored in ("--thrift-port", "--nanolog", "--notifications-addr", "--max-port-count", "--log-file-max-size",
                    "--log-file-max-files"):
        p.add_argument(ignored, help=argparse.SUPPRESS)
    p.add_argument("--log-flush", action="store_true", help=argparse.SUPPRESS)
    for refused in ("--pcap", "--use-files", "--restore-state", "--packet-in"):
        p.add_argument(refused, nargs="?", const=".", help=argparse.SUPPRESS)
    return p


def target_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="softswitch ... --", description="target options (after --)")
    p.add_argument("--grpc-server-addr", default="127.0.0.1:9559",
                   help="P4Runtime server address (default 127.0.0.1:9559; BMv2 binds 0.0.0.0)")
    p.add_argument("--cpu-port", type=int, help="port number of the CPU (packet-in/out); without it no packet I/O")
    p.add_argument("--drop-port", type=int, default=511, help="port number meaning drop (default 511)")
    p.add_argument("--grpc-server-ssl", action="store_true", help="serve P4Runtime over TLS")
    p.add_argument("--grpc-server-cacert", help="PEM CA certificate to verify clients against")
    p.add_argument("--grpc-server-cert", help="PEM server certificate")
    p.add_argument("--grpc-server-key", help="PEM server private key")
    p.add_argument("--grpc-server-with-client-auth", action="store_true", help="require a valid client certificate")
    p.add_argument("--grpc-max-streams", type=int, default=DEFAULT_MAX_STREAMS, metavar="N",
                   help=f"refuse StreamChannels beyond N open ones with RESOURCE_EXHAUSTED (default "
                        f"{DEFAULT_MAX_STREAMS}); idle streams cost no thread, so they never slow down Write/Read")
    p.add_argument("--packet-io", choices=("ring", "plain"), default="ring",
                   help="how ports read and write frames: mmap'ed TPACKET rings, batched (default; falls back to "
                        "plain with a log line if the kernel refuses a ring), or one system call per frame")
    p.add_argument("--strict-bytestrings", action="store_true",
                   help="refuse zero-padded (non-canonical) byte strings with INVALID_ARGUMENT; the spec and BMv2 "
                        "accept them (use it to check that a controller sends canonical bytes)")
    return p


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def setup_logging(args: argparse.Namespace) -> None:
    logging.addLevelName(TRACE, "TRACE")
    fmt = logging.Formatter("[%(asctime)s.%(msecs)03d] [softswitch] [%(levelname).1s] %(message)s", "%H:%M:%S")
    root = logging.getLogger("softswitch")
    root.handlers.clear()
    root.propagate = False
    level = LEVELS[args.log_level]
    handlers: list[logging.Handler] = []
    if args.log_console:
        handlers.append(logging.StreamHandler(sys.stdout))
    if args.log_file:
        handlers.append(logging.FileHandler(args.log_file))
    if not handlers:  # like BMv2 without a log option: quiet, but problems still show
        handlers.append(logging.StreamHandler(sys.stderr))
        level = max(level, logging.WARNING)
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    root.setLevel(level)


def _read_pem(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"--grpc-server-{what} {path}: cannot read it: {exc.strerror}") from None
    if b"-----BEGIN" not in data:
        raise UsageError(f"--grpc-server-{what} {path}: not a PEM file (no -----BEGIN line)")
    return data


def _check_tls_files(cert: str, key: str, cacert: str | None) -> None:
    """Load the files the way the TLS library will, so that a key of another certificate or a broken CA file
    is named here; gRPC would only refuse to listen, which reads like a busy address."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise UsageError(f"--grpc-server-key {key} is not the private key of --grpc-server-cert {cert} (they do "
                             "not match); give the key the certificate was made for") from None
        raise UsageError(f"--grpc-server-cert {cert} / --grpc-server-key {key}: not a usable certificate and key "
                         f"({exc.reason or exc})") from None
    if cacert is not None:
        try:
            ctx.load_verify_locations(cafile=cacert)
        except ssl.SSLError as exc:
            raise UsageError(f"--grpc-server-cacert {cacert}: not a usable CA certificate ({exc.reason or exc})") from None


def tls_options(t: argparse.Namespace) -> TlsOptions | None:
    if not t.grpc_server_ssl:
        if t.grpc_server_cert or t.grpc_server_key or t.grpc_server_cacert or t.grpc_server_with_client_auth:
            raise UsageError("TLS options given without --grpc-server-ssl")
        return None
    cert = _read_pem(t.grpc_server_cert, "cert")
    key = _read_pem(t.grpc_server_key, "key")
    if cert is None or key is None:
        raise UsageError("--grpc-server-ssl needs --grpc-server-cert and --grpc-server-key")
    cacert = _read_pem(t.grpc_server_cacert, "cacert")
    if t.grpc_server_with_client_auth and cacert is None:
        raise UsageError("--grpc-server-with-client-auth needs --grpc-server-cacert to verify clients")
    _check_tls_files(t.grpc_server_cert, t.grpc_server_key, t.grpc_server_cacert)
    return TlsOptions(cert, key, cacert, t.grpc_server_with_client_auth)


def run(argv: list[str]) -> int:
    general, target = split_argv(argv)
    args = general_parser().parse_args(general)
    if args.version:
        from importlib.metadata import PackageNotFoundError, version
        try:
            print(f"softswitch {version('offloadgen')}")
        except PackageNotFoundError:
            print("softswitch (version unknown)")
        return 0
    t = target_parser().parse_args(target)
    for refused in ("pcap", "use_files", "restore_state", "packet_in"):
        if getattr(args, refused) is not None:
            raise UsageError(f"--{refused.replace('_', '-')} is not supported by softswitch; attach interfaces with -i")
    if args.program and args.no_p4:
        raise UsageError("give either a program or --no-p4, not both")
    if not args.program and not args.no_p4:
        raise UsageError("give the P4 program to run (flowtable.p4 from `offloadgen build`) or --no-p4")
    if args.program and args.program.endswith(".json"):
        raise UsageError(f"{args.program}: softswitch runs the P4 source, not a BMv2 JSON; give flowtable.p4")
    if t.cpu_port is not None and not 0 < t.cpu_port < 512:
        raise UsageError(f"--cpu-port {t.cpu_port}: must be in 1..511 (0 is not a valid CPU port)")
    ports = [parse_port_spec(s) for s in args.interface]
    numbers = [n for n, _ in ports]
    if len(set(numbers)) != len(numbers):
        raise UsageError(f"a port number is given twice in -i {' -i '.join(args.interface)}")
    if t.cpu_port is not None and t.cpu_port in numbers:
        raise UsageError(f"port {t.cpu_port} is the CPU port; do not attach an interface to it")
    if t.grpc_max_streams < 1:
        raise UsageError(f"--grpc-max-streams {t.grpc_max_streams}: must be at least 1 (the controller's stream)")
    tls = tls_options(t)
    setup_logging(args)

    switch = SoftSwitch(args.device_id, t.cpu_port, drop_port=t.drop_port,
                        strict_bytestrings=t.strict_bytestrings)
    switch.dump_bytes = args.dump_packet_data
    if args.program:
        try:
            source = Path(args.program).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"{args.program}: {getattr(exc, 'strerror', None) or exc}") from None
        try:
            switch.load_source(source, args.program)
        except P4RuntimeError as exc:
            raise UsageError(f"{args.program}: {exc.message}") from None
        log.info("program %s loaded", args.program)

    raw_ports: list[Port] = []
    server = None
    stop = threading.Event()
    batching = TxBatching()  # shared: a frame received on one port and sent on another joins that port's batch
    try:
        for number, iface in ports:
            port = open_port(number, iface, switch.receive, io=t.packet_io, batching=batching)
            raw_ports.append(port)
            switch.add_port(number, port)
            log.info("port %d: %s (%s packet I/O)", number, iface, port.io)
        tune_gc()
        server = serve(switch, t.grpc_server_addr, tls, max_streams=t.grpc_max_streams)
        for port in raw_ports:
            port.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        print(f"Server listening on {t.grpc_server_addr}", flush=True)
        log.info("device %d serving P4Runtime on %s%s, cpu port %s", args.device_id, t.grpc_server_addr,
                 " (TLS)" if tls else "", t.cpu_port)
        while not stop.wait(0.2):
            pass
        log.info("stopping")
    finally:
        if server is not None:
            server.stop(grace=0.5).wait(2)
        switch.stop()
        # Losses are problems (WARNING: shown even without a log option, as BMv2 shows errors); the rest is INFO.
        for port in raw_ports:
            port.close()
            lost = port.kernel_dropped or port.dropped_oversize or getattr(port, "tx_dropped", 0)
            log.log(logging.WARNING if lost else logging.INFO, "%s", port_summary(port))
        log.log(logging.WARNING if switch.packet_ins_dropped else logging.INFO,
                "packet-ins: %d sent to the primary, %d dropped (no primary, or its stream %d deep)",
                switch.packet_ins, switch.packet_ins_dropped, PACKET_IN_QUEUE)
    return 0


GC_THRESHOLDS = (100_000, 50, 100)


def tune_gc() -> None:
    """Make the cyclic garbage collector run rarely in the switch process.

    Table entries are long-lived objects without cycles, and every Write/Read allocates thousands of small ones
    (protobuf wrappers, entries, keys). With the default thresholds (700, 10, 10) the collector ran every few
    hundred updates and re-walked the ever larger table: with 20,000 entries it took 5/6 of the time of an
    insert batch (5,200 inserts/s instead of 33,000 with the collector off). Freezing what startup allocated
    (the front end's parse trees) and collecting generation 0 every 100,000 allocations keeps cycles collected
    without the per-batch walk.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def main(argv: list[str] | None = None) -> int:
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        print(f"softswitch: error: {exc}", file=sys.stderr)
        return 2
    except (PortError, ServerStartError) as exc:
        print(f"softswitch: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
