"""Starting and stopping a switch process: softswitch or BMv2's simple_switch_grpc, with the same argv.

softswitch's command line mirrors simple_switch_grpc's, so one argv builder serves both and a topology can
swap one for the other. Readiness is polled (the gRPC port answering), never waited for with a fixed sleep;
stopping is SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

import grpc

SwitchKind = Literal["softswitch", "bmv2"]
KINDS: tuple[SwitchKind, ...] = ("softswitch", "bmv2")


class SwitchStartError(RuntimeError):
    """The switch could not be started (missing binary, busy port, early exit); says which and how to fix."""


@dataclass(frozen=True)
class SwitchTls:
    """The switch's side of TLS: the same four options on simple_switch_grpc and softswitch."""

    cert: Path
    key: Path
    ca: Path | None = None  # to verify client certificates
    client_auth: bool = False  # --grpc-server-with-client-auth: refuse clients without a certificate from `ca`

    def check(self) -> None:
        """Raise SwitchStartError for unreadable files or a key of another certificate. BMv2 would log "Invalid
        private key" and serve nothing; say which option is wrong before starting either switch."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        for path, option in ((self.cert, "--grpc-server-cert"), (self.key, "--grpc-server-key"),
                             (self.ca, "--grpc-server-cacert")):
            if path is not None and not os.access(path, os.R_OK):
                raise SwitchStartError(f"{option} {path}: cannot read it (missing, or no permission)")
        try:
            ctx.load_cert_chain(str(self.cert), str(self.key))
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                raise SwitchStartError(f"--grpc-server-key {self.key} is not the private key of --grpc-server-cert "
                                       f"{self.cert} (they do not match)") from None
            raise SwitchStartError(f"--grpc-server-cert {self.cert} / --grpc-server-key {self.key}: not a usable "
                                   f"certificate and key ({exc.reason or exc})") from None
        if self.ca is not None:
            try:
                ctx.load_verify_locations(cafile=str(self.ca))
            except ssl.SSLError as exc:
                raise SwitchStartError(f"--grpc-server-cacert {self.ca}: not a usable CA certificate "
                                       f"({exc.reason or exc})") from None

    def argv(self) -> list[str]:
        out = ["--grpc-server-ssl", "--grpc-server-cert", str(self.cert), "--grpc-server-key", str(self.key)]
        if self.ca is not None:
            out += ["--grpc-server-cacert", str(self.ca)]
        if self.client_auth:
            out.append("--grpc-server-with-client-auth")
        return out


@dataclass
class SwitchSpec:
    kind: SwitchKind = "softswitch"
    ports: dict[int, str] = field(default_factory=dict)  # P4 port number -> Linux interface
    grpc_addr: str = "127.0.0.1:9559"
    device_id: int = 1
    cpu_port: int = 255
    binary: str | None = None  # explicit simple_switch_grpc (the --bmv2 option); softswitch runs from this venv
    log_file: Path | None = None
    log_level: str | None = None  # trace, debug, info, warn, error, off
    extra: tuple[str, ...] = ()  # more target options (after --)
    # BMv2's Thrift (simple_switch_CLI) port; None: a free one, so that two BMv2s (two tests, two runs) never
    # collide on BMv2's own default 9090.
    thrift_port: int | None = None
    tls: SwitchTls | None = None  # serve P4Runtime over TLS


def find_bmv2(explicit: str | None = None) -> str | None:
    if explicit:
        return shutil.which(explicit)
    return shutil.which("simple_switch_grpc")


def switch_argv(spec: SwitchSpec) -> list[str]:
    if spec.kind == "bmv2":
        binary = find_bmv2(spec.binary)
        if binary is None:
            raise SwitchStartError(
                f"simple_switch_grpc{' (' + spec.binary + ')' if spec.binary else ''} not found on PATH; install "
                "BMv2 (see the README, 'Running on BMv2') or use --switch softswitch"
            )
        argv = [binary]
    elif spec.kind == "softswitch":
        argv = [sys.executable, "-m", "softswitch"]
    else:
        raise SwitchStartError(f"unknown switch kind {spec.kind!r}; use one of {', '.join(KINDS)}")
    argv += ["--device-id", str(spec.device_id)]
    for number, iface in sorted(spec.ports.items()):
        argv += ["-i", f"{number}@{iface}"]
    argv.append("--no-p4")
    if spec.kind == "bmv2":
        argv += ["--thrift-port", str(spec.thrift_port if spec.thrift_port is not None else free_port())]
    if spec.log_level:
        argv += ["--log-console", "--log-level", spec.log_level]
    argv += ["--", "--grpc-server-addr", spec.grpc_addr, "--cpu-port", str(spec.cpu_port), *spec.extra]
    if spec.tls is not None:
        argv += spec.tls.argv()
    return argv


def _split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def port_in_use(addr: str) -> bool:
    host, port = _split_addr(addr)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def free_grpc_addr(host: str = "127.0.0.1") -> str:
    """A loopback address:port nobody listens on now (for tests that run several switches)."""
    return f"{host}:{free_port(host)}"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (a second BMv2's Thrift port, next to one on 9090)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _tls_answers(addr: str, timeout: float) -> bool:
    """A TLS server answers a handshake there. Not verified: this only asks whether the switch is up, and
    needs no client certificate for it (a TLS 1.3 server judges that after the handshake)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    host, port = _split_addr(addr)
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, ctx.wrap_socket(raw):
            return True
    except OSError:
        return False


class SwitchProcess:
    """A running switch; a context manager. `start()` returns once its P4Runtime server answers."""

    def __init__(self, spec: SwitchSpec, start_timeout: float = 30.0) -> None:
        self.spec = spec
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._own_log = spec.log_file is None
        self.log_path = spec.log_file or Path(tempfile.mkstemp(prefix=f"{spec.kind}-", suffix=".log")[1])

    @property
    def grpc_addr(self) -> str:
        return self.spec.grpc_addr

    def start(self) -> SwitchProcess:
        argv = switch_argv(self.spec)
        if self.spec.tls is not None:
            self.spec.tls.check()
        if port_in_use(self.spec.grpc_addr):
            raise SwitchStartError(f"{self.spec.grpc_addr} is already in use; stop the other switch or pick another address")
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + self.start_timeout
        delay = 0.02
        while True:
            if self.proc.poll() is not None:
                raise SwitchStartError(f"{self.spec.kind} exited with status {self.proc.returncode} during start-up:\n"
                                       f"{self.log_tail()}\n(argv: {' '.join(argv)})")
            if self._grpc_ready(min(0.2, delay)):
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise SwitchStartError(f"{self.spec.kind} did not answer on {self.spec.grpc_addr} within "
                                       f"{self.start_timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def _grpc_ready(self, timeout: float) -> bool:
        if not port_in_use(self.spec.grpc_addr):
            return False
        if self.spec.tls is not None:
            return _tls_answers(self.spec.grpc_addr, timeout)
        channel = grpc.insecure_channel(self.spec.grpc_addr)
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
            return True
        except grpc.FutureTimeoutError:
            return False
        finally:
            channel.close()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL at once (tests of restarts and reconciliation)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> SwitchProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
        if self._own_log and et is None:
            self.log_path.unlink(missing_ok=True)
