"""The status endpoint answers registered commands, reports errors per request and survives bad input."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from runtime.status import StatusError, StatusServer, query


def test_query_roundtrip_and_errors(tmp_path: Path) -> None:
    sock = tmp_path / "c.sock"
    with StatusServer(sock) as server:
        server.register("flows", lambda req: [{"id": 1, "state": "ESTABLISHED"}])
        server.register("boom", lambda req: 1 / 0)
        assert query("flows", sock) == [{"id": 1, "state": "ESTABLISHED"}]
        with pytest.raises(StatusError, match="division by zero"):
            query("boom", sock)
        with pytest.raises(StatusError, match="unknown command 'nope'; known: boom, flows"):
            query("nope", sock)
        with socket.socket(socket.AF_UNIX) as s:  # garbage does not kill the server
            s.connect(str(sock))
            s.sendall(b"not json\n")
            assert b'"ok": false' in s.recv(4096)
        assert query("flows", sock)[0]["id"] == 1
        assert oct(sock.stat().st_mode & 0o777) == "0o600"
    assert not sock.exists()


def test_not_running_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StatusError, match=r"no controller is running at .*offloadgen run"):
        query("flows", tmp_path / "none.sock")


def test_second_server_on_the_same_socket_is_refused(tmp_path: Path) -> None:
    sock = tmp_path / "c.sock"
    with StatusServer(sock), pytest.raises(StatusError, match="already serving"):
        StatusServer(sock).start()
    # a stale socket file left by a killed controller is replaced
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock))
    stale.close()
    with StatusServer(sock) as s2:
        s2.register("x", lambda req: 2)
        assert query("x", sock) == 2


def _silent_listener(path: Path) -> socket.socket:
    """A status socket whose controller accepts but never answers (its worker is stuck)."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(4)
    return srv


def test_a_controller_that_does_not_answer_is_a_clear_error(tmp_path: Path) -> None:
    sock = tmp_path / "stuck.sock"
    with _silent_listener(sock), pytest.raises(StatusError, match=r"did not answer 'flows' within 0.3 s; it is busy"):
        query("flows", sock, timeout=0.3)


def test_flows_command_on_a_silent_controller_prints_one_line(tmp_path: Path) -> None:
    """`offloadgen flows` used to print a socket.timeout traceback here."""
    import subprocess
    import sys

    sock = tmp_path / "stuck.sock"
    with _silent_listener(sock):
        out = subprocess.run([sys.executable, "-m", "offloadgen.cli", "flows", "--status-socket", str(sock),
                              "--timeout", "0.5"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    assert out.stderr.strip() == (f"offloadgen flows: {sock}: the controller did not answer 'flows' within 0.5 s; "
                                  "it is busy or hung (see its log); retry, or give a longer --timeout")
