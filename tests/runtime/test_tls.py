"""TLS between the controller and the switch, on softswitch and BMv2 (both serve --grpc-server-ssl with client
authentication): mutual TLS works for the client and for `offloadgen run`, and every way of getting it wrong
ends in a message that says what happened and which option fixes it -- a plaintext controller at a TLS switch,
TLS at a plaintext switch, a wrong CA, a missing or foreign client certificate, a key of another certificate."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from offloadgen.pki import TestPki, make_test_pki, shell_argv
from offloadgen.switchproc import SwitchProcess, SwitchSpec, SwitchStartError, SwitchTls, free_grpc_addr
from runtime.client import SwitchClient
from runtime.entities import TableEntry
from runtime.errors import P4RuntimeError
from runtime.pipeline import load_build
from runtime.tls import TlsConfig, TlsError

KINDS = ["softswitch", pytest.param("bmv2", marks=pytest.mark.bmv2)]
pytestmark = [pytest.mark.root]

ENTRY = TableEntry("flow_v4", {"in_port": 1, "src_addr": "10.0.1.10", "dst_addr": "192.0.2.20", "proto": 6,
                               "src_port": 1000, "dst_port": 80},
                   "offload", {"port": 4, "smac": "02:00:00:00:01:04", "dmac": "02:00:00:00:00:20"})


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    """Another throwaway CA: its certificates are what a wrong CA or a foreign client certificate look like."""
    return make_test_pki(tmp_path_factory.mktemp("other-pki"))


def mtls_switch(kind: str, pki: TestPki) -> SwitchProcess:
    return SwitchProcess(SwitchSpec(kind=kind, grpc_addr=free_grpc_addr(),
                                    tls=SwitchTls(pki.server_cert, pki.server_key, pki.ca, client_auth=True)))


@pytest.fixture(params=KINDS)
def tls_switch(request: pytest.FixtureRequest, pki: TestPki) -> Iterator[tuple[str, SwitchProcess]]:
    with mtls_switch(request.param, pki) as sw:
        yield request.param, sw


def connect_error(addr: str, tls: TlsConfig | None) -> str:
    with pytest.raises(P4RuntimeError) as info:
        SwitchClient(addr, tls=tls, reconnect=True).connect(2.0)
    return str(info.value)


def test_mutual_tls_client_and_every_wrong_setting(tls_switch: tuple[str, SwitchProcess], pki: TestPki,
                                                   other_pki: TestPki, build_dir: Path) -> None:
    kind, sw = tls_switch
    good = TlsConfig(pki.ca, pki.client_cert, pki.client_key)
    with SwitchClient(sw.grpc_addr, election_id=(0, 10), tls=good) as c:  # as `offloadgen run`
        assert c.primary
        c.set_pipeline(load_build(build_dir, kind))
        c.insert([ENTRY])
        assert [e.match["src_port"] for e in c.read_table("flow_v4")] == [1000]
        # the unmodified p4runtime-shell, with the options the README and topo.py give, reads it as a backup
        out = subprocess.run(shell_argv(sw.grpc_addr, pki), input='table_entry["flow_v4"].read(lambda e: print(e))\n',
                             capture_output=True, text=True, timeout=120, check=False)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "You are not the primary client" in out.stdout, out.stdout + out.stderr
        assert '("ingress.flow_v4")' in out.stdout and '("ingress.offload")' in out.stdout, out.stdout

    text = connect_error(sw.grpc_addr, None)  # the issue: used to be a bare "no arbitration answer"
    assert "serves P4Runtime over TLS but the controller connected in plaintext; give --tls-ca" in text, text
    text = connect_error(sw.grpc_addr, TlsConfig(other_pki.ca, pki.client_cert, pki.client_key))
    assert f"is not signed by the CA in --tls-ca {other_pki.ca}" in text, text
    text = connect_error(sw.grpc_addr, TlsConfig(pki.ca))
    assert "requires a client certificate" in text and "give --tls-cert and --tls-key" in text, text
    text = connect_error(sw.grpc_addr, TlsConfig(pki.ca, other_pki.client_cert, other_pki.client_key))
    assert f"refused the client certificate --tls-cert {other_pki.client_cert}" in text, text


@pytest.mark.parametrize("kind", KINDS)
def test_tls_controller_at_a_plaintext_switch(kind: str, pki: TestPki) -> None:
    with SwitchProcess(SwitchSpec(kind=kind, grpc_addr=free_grpc_addr())) as sw:
        text = connect_error(sw.grpc_addr, TlsConfig(pki.ca, pki.client_cert, pki.client_key))
    assert "does not speak TLS (a plaintext P4Runtime server" in text and "leave out --tls-ca" in text, text


def test_nothing_listening_is_named(pki: TestPki) -> None:
    text = connect_error(free_grpc_addr(), TlsConfig(pki.ca))
    assert "nothing accepts connections at" in text, text


def test_controller_files_are_checked_before_dialling(pki: TestPki, other_pki: TestPki, tmp_path: Path) -> None:
    with pytest.raises(TlsError, match=r"--tls-key .* is not the private key of --tls-cert .*they do not match"):
        TlsConfig(pki.ca, pki.client_cert, other_pki.client_key).check()
    with pytest.raises(TlsError, match=r"--tls-ca .*missing.pem: cannot read it: No such file"):
        TlsConfig(tmp_path / "missing.pem").check()
    with pytest.raises(TlsError, match="--tls-cert needs --tls-key"):
        TlsConfig(pki.ca, pki.client_cert).check()
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    with pytest.raises(TlsError, match="not a PEM file"):
        TlsConfig(tmp_path / "junk.pem").check()


def test_softswitch_names_a_key_of_another_certificate(pki: TestPki, other_pki: TestPki, tmp_path: Path) -> None:
    """It used to say "the address is in use or invalid"."""
    base = [sys.executable, "-m", "softswitch", "--no-p4", "--", "--grpc-server-addr", free_grpc_addr(),
            "--grpc-server-ssl", "--grpc-server-cert", str(pki.server_cert)]
    out = subprocess.run([*base, "--grpc-server-key", str(other_pki.server_key)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip() == (f"softswitch: error: --grpc-server-key {other_pki.server_key} is not the private "
                                  f"key of --grpc-server-cert {pki.server_cert} (they do not match); give the key "
                                  "the certificate was made for")
    out = subprocess.run([*base, "--grpc-server-key", str(tmp_path / "nokey.pem")], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2
    assert f"--grpc-server-key {tmp_path / 'nokey.pem'}: cannot read it: No such file or directory" in out.stderr


@pytest.mark.parametrize("kind", KINDS)
def test_switch_start_names_a_key_of_another_certificate(kind: str, pki: TestPki, other_pki: TestPki) -> None:
    """BMv2 only logs "Invalid private key" and serves nothing; the testbed says which option is wrong."""
    spec = SwitchSpec(kind=kind, grpc_addr=free_grpc_addr(),
                      tls=SwitchTls(pki.server_cert, other_pki.server_key, pki.ca, client_auth=True))
    with pytest.raises(SwitchStartError, match=r"--grpc-server-key .* is not the private key of --grpc-server-cert"):
        SwitchProcess(spec).start()


def run_command(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "w") as fh:
        return subprocess.Popen([sys.executable, "-m", "offloadgen.cli", "run", *args], stdout=fh,
                                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_offloadgen_run_over_mutual_tls(kind: str, pki: TestPki, build_dir: Path, router_config_path: Path,
                                        tmp_path: Path) -> None:
    with mtls_switch(kind, pki) as sw:
        common = ["--config", str(router_config_path), "--build", str(build_dir), "--switch", sw.grpc_addr,
                  "--target", kind, "--status-socket", str(tmp_path / "c.sock")]
        # plaintext at the TLS switch: one clear line, exit status 2
        log = tmp_path / "plain.log"
        proc = run_command([*common, "--connect-timeout", "2"], log)
        assert proc.wait(60) == 2, log.read_text()
        text = log.read_text()
        assert "Traceback" not in text
        assert "no arbitration answer within 2 s (plaintext)" in text and "give --tls-ca" in text, text

        log = tmp_path / "tls.log"
        proc = run_command([*common, "--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert),
                            "--tls-key", str(pki.client_key)], log)
        try:
            deadline = time.monotonic() + 60
            while "running:" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert proc.poll() is None and "running:" in log.read_text(), log.read_text()
            reader = SwitchClient(sw.grpc_addr, election_id=(0, 1),
                                  tls=TlsConfig(pki.ca, pki.client_cert, pki.client_key))
            with reader.connect(10, require_primary=False):
                assert not reader.primary  # the controller (election id 10) is primary over TLS
                assert reader.primary_election_id == (0, 10)
                assert reader.get_cookie() is not None  # and pushed its pipeline
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(30)
        assert rc == 0, log.read_text()
        assert "Traceback" not in log.read_text()


@pytest.mark.parametrize("kind", KINDS)
def test_certificate_without_the_dialled_address(kind: str, tmp_path: Path) -> None:
    """A switch certificate made for "localhost" only: dialling 127.0.0.1 is named as a name mismatch, and
    --tls-server-name localhost (gRPC's target name override) connects."""
    named = make_test_pki(tmp_path / "pki", server_ips=())
    spec = SwitchSpec(kind=kind, grpc_addr=free_grpc_addr(), tls=SwitchTls(named.server_cert, named.server_key))
    with SwitchProcess(spec) as sw:
        text = connect_error(sw.grpc_addr, TlsConfig(named.ca))
        assert "does not name '127.0.0.1'" in text and "--tls-server-name" in text, text
        with SwitchClient(sw.grpc_addr, tls=TlsConfig(named.ca, server_name="localhost")) as c:
            assert c.primary


def test_a_silent_peer_is_not_called_a_plaintext_switch(pki: TestPki) -> None:
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        text = connect_error(f"127.0.0.1:{silent.getsockname()[1]}", TlsConfig(pki.ca))
    assert "accepts connections but did not answer a TLS handshake" in text, text


def test_run_command_names_a_key_of_another_certificate(pki: TestPki, other_pki: TestPki, build_dir: Path,
                                                        router_config_path: Path, tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "offloadgen.cli", "run", "--config", str(router_config_path),
                          "--build", str(build_dir), "--switch", free_grpc_addr(), "--status-socket",
                          str(tmp_path / "c.sock"), "--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert),
                          "--tls-key", str(other_pki.client_key)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == (f"offloadgen run: --tls-key {other_pki.client_key} is not the private key of "
                                  f"--tls-cert {pki.client_cert} (they do not match); give the key the certificate "
                                  "was made for")
