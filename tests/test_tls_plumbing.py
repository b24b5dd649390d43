"""`offloadgen demo --tls` and `mininet/topo.py --tls` reach the testbed, and the testbed starts the controller
with the options that match the switch's certificates (the TLS handshakes themselves are tested on both
switches in tests/runtime/test_tls.py; this checks the wiring without starting Mininet)."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest

from offloadgen.cli import make_parser
from offloadgen.pki import make_test_pki, shell_argv


def test_demo_takes_tls() -> None:
    args = make_parser().parse_args(["demo", "--tls", "--switch", "softswitch"])
    assert args.tls is True
    assert make_parser().parse_args(["demo"]).tls is False


@pytest.mark.mininet
def test_topo_script_takes_tls(repo: Path) -> None:
    out = subprocess.run([sys.executable, str(repo / "mininet" / "topo.py"), "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--tls" in out.stdout


@pytest.mark.mininet
def test_testbed_controller_and_shell_use_the_testbed_certificates(tmp_path: Path) -> None:
    from offloadgen.testbed import controller_argv

    pki = make_test_pki(tmp_path / "tls")
    argv = controller_argv(tmp_path / "router.toml", "127.0.0.1:9559", tmp_path / "build", "bmv2",
                           tmp_path / "c.sock", pki)
    opts = dict(itertools.pairwise(argv))
    assert (opts["--tls-ca"], opts["--tls-cert"], opts["--tls-key"]) == (str(pki.ca), str(pki.client_cert),
                                                                         str(pki.client_key))
    assert "--tls-ca" not in controller_argv(tmp_path / "r.toml", "127.0.0.1:9559", tmp_path, "bmv2", tmp_path / "s")
    shell = shell_argv("127.0.0.1:9559", pki)
    opts = dict(itertools.pairwise(shell))
    assert "--ssl" in shell and opts["--cacert"] == str(pki.ca) and opts["--private-key"] == str(pki.client_key)
