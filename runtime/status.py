"""The controller's local status endpoint: newline-delimited JSON over a Unix socket.

`offloadgen flows`, `stats` and `entries` are separate processes; they ask the running controller rather than
the switch, because only the controller knows connections, states and software counters. A Unix socket
(mode 0600 by default) keeps it local and needs no port. One request per line: {"cmd": "flows"}; one answer
per line: {"ok": true, "data": ...} or {"ok": false, "error": "..."}.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import socketserver
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/run/offloadgen/controller.sock"
MAX_REQUEST = 64 * 1024

Handler = Callable[[dict[str, Any]], Any]


class StatusError(RuntimeError):
    """The status endpoint could not be reached or refused the request; the message says what to do."""


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    handlers: dict[str, Handler]


class _Conn(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        while True:
            line = self.rfile.readline(MAX_REQUEST)
            if not line:
                return
            try:
                req = json.loads(line)
                if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                    raise ValueError('a request is a JSON object with a "cmd" string')
                handler = self.server.handlers.get(req["cmd"])
                if handler is None:
                    raise ValueError(f"unknown command {req['cmd']!r}; known: {', '.join(sorted(self.server.handlers))}")
                answer: dict[str, Any] = {"ok": True, "data": handler(req)}
            except Exception as exc:  # one bad request must not take the controller down
                log.debug("status request failed", exc_info=True)
                answer = {"ok": False, "error": str(exc)}
            self.wfile.write(json.dumps(answer, default=str).encode() + b"\n")
            self.wfile.flush()


class StatusServer:
    """Serves the registered handlers on a Unix socket in a background thread; a context manager."""

    def __init__(self, path: str | Path = DEFAULT_SOCKET, mode: int = 0o600) -> None:
        self.path = Path(path)
        self.mode = mode
        self.handlers: dict[str, Handler] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def register(self, cmd: str, handler: Handler) -> None:
        self.handlers[cmd] = handler

    def start(self) -> StatusServer:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            if _alive(self.path):
                raise StatusError(f"{self.path}: another controller is already serving status here; stop it or "
                                  "give --status-socket another path")
            self.path.unlink()  # left behind by a controller that was killed
        server = _Server(str(self.path), _Conn)
        server.handlers = self.handlers
        os.chmod(self.path, self.mode)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="status", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def __enter__(self) -> StatusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _alive(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False


def query(cmd: str, path: str | Path = DEFAULT_SOCKET, timeout: float = 10.0, **args: Any) -> Any:
    """Ask the running controller; raise StatusError with a hint when it is not running or does not answer.

    A controller whose worker is stuck (a long pipeline push, a hung switch) accepts the connection but answers
    late; that is a message for the user, not a socket traceback."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise StatusError(f"no controller is running at {path}; start one with `offloadgen run` (or pass "
                              "--status-socket)") from None
        except PermissionError:
            raise StatusError(f"{path}: permission denied; run as the user that started the controller") from None
        except TimeoutError:
            raise StatusError(f"{path}: the controller did not accept the connection within {timeout:g} s; it is "
                              "busy or hung (see its log); retry, or give a longer --timeout") from None
        buf = b""
        try:
            s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
            while not buf.endswith(b"\n"):
                chunk = s.recv(1 << 16)
                if not chunk:
                    raise StatusError(f"{path}: the controller closed the connection without answering")
                buf += chunk
        except TimeoutError:
            raise StatusError(f"{path}: the controller did not answer {cmd!r} within {timeout:g} s; it is busy or "
                              "hung (see its log); retry, or give a longer --timeout") from None
        except OSError as exc:
            raise StatusError(f"{path}: the connection to the controller failed: {exc.strerror or exc}") from None
    try:
        answer = json.loads(buf)
    except ValueError:
        raise StatusError(f"{path}: the answer is not JSON; is this an offloadgen controller's status socket?") from None
    if not isinstance(answer, dict) or not answer.get("ok"):
        raise StatusError(f"controller: {answer.get('error') if isinstance(answer, dict) else answer}")
    return answer.get("data")
