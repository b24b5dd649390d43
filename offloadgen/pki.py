"""A throwaway certificate authority for TLS between the controller and a switch (tests, testbed, demo).

Made with the `openssl` command (Debian's openssl package; scripts/setup.sh installs it), so no extra Python
dependency is needed: a CA, a server certificate whose subjectAltName holds 127.0.0.1, ::1 and localhost (the
addresses a controller dials on this machine, which gRPC checks against the SAN), and a client certificate
for mutual TLS. EC P-256 keys: quick to make, and accepted by softswitch's gRPC and BMv2's alike.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


class PkiError(RuntimeError):
    """The certificates could not be made (openssl missing or failing); says which and how to fix."""


@dataclass(frozen=True, slots=True)
class TestPki:
    """Paths of the PEM files. Server side: ``ca`` to verify clients, ``server_cert``/``server_key``;
    controller side: ``ca`` to verify the switch, ``client_cert``/``client_key`` for mutual TLS."""

    __test__ = False  # not a pytest test class, despite the name

    directory: Path
    ca: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise PkiError("openssl is not installed; `apt-get install openssl` (scripts/setup.sh does) to make "
                       "the TLS certificates")
    out = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    if out.returncode != 0:
        raise PkiError(f"openssl {' '.join(args[:2])} failed in {cwd}: {out.stderr.strip()}")


def _key_and_csr(name: str, cn: str, cwd: Path) -> None:
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=cwd)


def _sign(name: str, ext: str, days: int, cwd: Path, ca: str = "ca") -> None:
    (cwd / f"{name}.ext").write_text(ext)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-out", f"{name}.pem", "-days", str(days), "-sha256", "-extfile", f"{name}.ext", cwd=cwd)


def make_test_pki(directory: Path, *, days: int = 7, server_names: tuple[str, ...] = ("localhost",),
                  server_ips: tuple[str, ...] = ("127.0.0.1", "::1")) -> TestPki:
    """Write ca.pem, server.pem/.key and client.pem/.key into ``directory`` (created; keys mode 0600)."""
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "ca.key", "-out", "ca.pem", "-days", str(days), "-subj", "/CN=offloadgen throwaway CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=directory)
    san = ",".join([f"DNS:{n}" for n in server_names] + [f"IP:{ip}" for ip in server_ips])
    _key_and_csr("server", "offloadgen switch", directory)
    _sign("server", f"subjectAltName={san}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
          "extendedKeyUsage=serverAuth\n", days, directory)
    _key_and_csr("client", "offloadgen controller", directory)
    _sign("client", "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
          days, directory)
    for leftover in ("server.csr", "client.csr", "server.ext", "client.ext", "ca.srl"):
        (directory / leftover).unlink(missing_ok=True)
    for key in ("ca.key", "server.key", "client.key"):
        (directory / key).chmod(0o600)
    return TestPki(directory, directory / "ca.pem", directory / "ca.key", directory / "server.pem",
                   directory / "server.key", directory / "client.pem", directory / "client.key")


def shell_python() -> str:
    """p4runtime-shell pins protobuf<3.21, so scripts/setup.sh gives it its own .venv-shell beside .venv; the
    project's interpreter cannot import it."""
    shell = Path(__file__).resolve().parent.parent / ".venv-shell" / "bin" / "python"
    return str(shell) if shell.exists() else ".venv-shell/bin/python"


def shell_argv(grpc_addr: str, pki: TestPki | None = None, device_id: int = 1) -> list[str]:
    """p4runtime-shell as a backup (election id 0,1) beside the controller, with its TLS options when the
    switch serves TLS (p4runtime_sh --ssl --cacert --cert --private-key)."""
    argv = [shell_python(), "-m", "p4runtime_sh", "--grpc-addr", grpc_addr, "--device-id", str(device_id),
            "--election-id", "0,1"]
    if pki is not None:
        argv += ["--ssl", "--cacert", str(pki.ca), "--cert", str(pki.client_cert), "--private-key",
                 str(pki.client_key)]
    return argv
