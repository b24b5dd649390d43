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
