"""TLS for the P4Runtime channel: the controller's credentials, and a diagnosis when a connection fails.

gRPC reports every TLS failure the same way -- the channel never becomes ready, the stream ends UNAVAILABLE
with a handshake error buried in its details -- and a plaintext client dialling a TLS switch sees nothing at
all (the "no arbitration answer" after 10 s). So when the controller cannot arbitrate it asks the address
itself, with Python's ``ssl`` and the same files, which of these happened, and says which option fixes it:

- nothing listens there;
- the switch serves TLS but the controller spoke plaintext (give ``--tls-ca``);
- the controller spoke TLS to a plaintext switch (leave the TLS options out, or start it with TLS);
- the switch's certificate is not signed by ``--tls-ca`` (a wrong CA), or does not name the address dialled;
- the switch wants a client certificate (``--tls-cert``/``--tls-key``) or rejects the one given.

Files are checked before dialling: an unreadable file, a certificate that is not PEM, a key that does not
belong to its certificate are one line naming the option, not a handshake failure later.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc


class TlsError(ValueError):
    """The controller's TLS options are unusable (unreadable file, not PEM, key not matching the certificate)."""


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """The controller's side. ``ca``: the CA that signed the switch's certificate (None: the system's roots);
    ``cert`` + ``key``: the client certificate for mutual TLS; ``server_name``: the name to check the switch's
    certificate against when it is not the dialled host (gRPC's ``ssl_target_name_override``)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None

    def _read(self, path: Path, option: str) -> bytes:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise TlsError(f"{option} {path}: cannot read it: {exc.strerror}") from None
        if b"-----BEGIN" not in data:
            raise TlsError(f"{option} {path}: not a PEM file (no -----BEGIN line)")
        return data

    def check(self) -> None:
        """Raise TlsError when a file is unreadable or the key does not belong to the certificate."""
        if (self.cert is None) != (self.key is None):
            given, missing = ("--tls-cert", "--tls-key") if self.cert is not None else ("--tls-key", "--tls-cert")
            raise TlsError(f"{given} needs {missing}: a client certificate and its private key go together")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if self.ca is not None:
            self._read(self.ca, "--tls-ca")
            try:
                ctx.load_verify_locations(cafile=str(self.ca))
            except ssl.SSLError as exc:
                raise TlsError(f"--tls-ca {self.ca}: not a usable CA certificate ({exc.reason or exc})") from None
        if self.cert is not None and self.key is not None:
            self._read(self.cert, "--tls-cert")
            self._read(self.key, "--tls-key")
            try:
                ctx.load_cert_chain(str(self.cert), str(self.key))
            except ssl.SSLError as exc:
                if exc.reason == "KEY_VALUES_MISMATCH":
                    raise TlsError(f"--tls-key {self.key} is not the private key of --tls-cert {self.cert} (they do "
                                   "not match); give the key the certificate was made for") from None
                raise TlsError(f"--tls-cert {self.cert} / --tls-key {self.key}: not a usable certificate and key "
                               f"({exc.reason or exc})") from None

    def credentials(self) -> grpc.ChannelCredentials:
        self.check()
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes() if self.ca else None,
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None)

    def channel_options(self) -> list[tuple[str, str | int]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []

    def describe(self) -> str:
        parts = [f"CA {self.ca}" if self.ca else "system CAs"]
        if self.cert:
            parts.append(f"client certificate {self.cert}")
        return "TLS (" + ", ".join(parts) + ")"


# BMv2 answers a whole-table read in one ReadResponse: 65,536 flow entries with counters are ~7.3 MB, over
# gRPC's 4 MiB default, so a controller reading a full table must accept larger messages.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
# A Write with a failed update answers one p4.v1.Error per update (OK ones too) in the status trailer: ~40
# bytes each without a message, so past ~200 updates the trailer exceeds gRPC's default 8 KB metadata limit
# and the client sees RESOURCE_EXHAUSTED ("received metadata size exceeds limit") for the whole batch and
# none of the per-update statuses -- the batch's outcome becomes unknown. Seen at 30,000 connections: orphan
# deletes answering NOT_FOUND were retried forever and the shutdown flush failed. 1,000 updates with
# messages (the client's batch) need ~0.5 MB; room for the largest table read back as errors.
MAX_METADATA_BYTES = 16 * 1024 * 1024


# The stream and the unary calls use two channels (asyncio and blocking), each with gRPC's own reconnect
# backoff; the calls made right after the stream is back (the pipeline check and push) wait for their
# channel to be ready. The backoff is left at gRPC's default on purpose: a short one (100 ms) made the
# stream's channel open a connection every 100 ms to a peer that accepts and never answers, filling its
# listen backlog, so the TLS diagnosis saw "nothing accepts connections" instead of a silent peer.

CHANNEL_OPTIONS: list[tuple[str, str | int]] = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                                                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                                                ("grpc.max_metadata_size", MAX_METADATA_BYTES),
                                                ("grpc.absolute_max_metadata_size", MAX_METADATA_BYTES)]


def open_channel(address: str, tls: TlsConfig | None) -> grpc.Channel:
    """The blocking channel for unary calls (Write, Read, pipeline)."""
    if tls is None:
        return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    return grpc.secure_channel(address, tls.credentials(), options=CHANNEL_OPTIONS + tls.channel_options())


def open_aio_channel(address: str, tls: TlsConfig | None) -> grpc.aio.Channel:
    """The asyncio channel for the StreamChannel (made inside the stream thread's event loop)."""
    if tls is None:
        return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
    return grpc.aio.secure_channel(address, tls.credentials(), options=CHANNEL_OPTIONS + tls.channel_options())


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def _context(tls: TlsConfig | None, *, verify: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.set_alpn_protocols(["h2"])  # what gRPC offers; some servers refuse a handshake without it
    if verify and tls is not None:
        if tls.ca is not None:
            ctx.load_verify_locations(cafile=str(tls.ca))
        else:
            ctx.load_default_certs()
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls is not None and tls.cert is not None and tls.key is not None:
        ctx.load_cert_chain(str(tls.cert), str(tls.key))
    return ctx


def _is_alert(exc: ssl.SSLError) -> bool:
    return "ALERT" in (exc.reason or "") or "alert" in str(exc)


def _handshake(address: str, ctx: ssl.SSLContext, server_name: str, timeout: float) -> tuple[str, str]:
    """One TLS handshake and the first read after it:
    ("ok"|"eof"|"alert"|"not-tls"|"silent"|"verify"|"down", detail)."""
    host, port = split_address(address)
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        return "down", exc.strerror or str(exc)
    with raw:
        try:
            conn = ctx.wrap_socket(raw, server_hostname=server_name)
        except ssl.SSLCertVerificationError as exc:
            return "verify", exc.verify_message or str(exc)
        except ssl.SSLError as exc:
            return ("alert" if _is_alert(exc) else "not-tls"), exc.reason or str(exc)
        except TimeoutError:
            return "silent", f"no answer within {timeout:g} s"
        except OSError as exc:  # reset or closed by a server that took the ClientHello for garbage
            return "not-tls", exc.strerror or type(exc).__name__
        with conn:
            # TLS 1.3 servers judge the client certificate after the handshake: the verdict is the first read
            # (an alert, or the connection closed), while an accepted client gets HTTP/2 SETTINGS at once.
            try:
                data = conn.recv(16)
            except ssl.SSLError as exc:
                return "alert", exc.reason or str(exc)
            except TimeoutError:
                return "ok", ""
            except OSError as exc:
                return "eof", exc.strerror or str(exc)
            return ("ok" if data else "eof"), ""


def diagnose(address: str, tls: TlsConfig | None, timeout: float = 2.0) -> str | None:
    """Why a P4Runtime connection to ``address`` fails at the transport, in a sentence naming the option to
    change; None when the transport is fine (then the cause is above it: device id, arbitration)."""
    host, _ = split_address(address)
    name = (tls.server_name if tls else None) or host
    plain_ctx = _context(tls, verify=False)
    state, detail = _handshake(address, plain_ctx, name, timeout)
    if state == "down":
        return f"nothing accepts connections at {address} ({detail}); is the switch running, and is this its --switch address?"
    if state == "silent":
        if tls is None:
            return None  # a plaintext peer that does not answer a handshake either: nothing more to learn here
        return (f"{address} accepts connections but did not answer a TLS handshake ({detail}); is it a P4Runtime "
                "switch, and does it serve TLS (--grpc-server-ssl)?")
    if tls is None:
        if state == "not-tls":
            return None  # a plaintext server, as the controller expects
        return (f"{address} serves P4Runtime over TLS but the controller connected in plaintext; give --tls-ca "
                "(the CA that signed the switch's certificate), and --tls-cert/--tls-key if the switch requires "
                "client certificates")
    if state == "not-tls":
        return (f"{address} does not speak TLS (a plaintext P4Runtime server; the handshake failed: {detail}); leave "
                "out --tls-ca/--tls-cert/--tls-key, or start the switch with --grpc-server-ssl")
    state, detail = _handshake(address, _context(tls, verify=True), name, timeout)
    if state == "verify":
        if "hostname" in detail.lower() or "ip address mismatch" in detail.lower():
            return (f"the switch's certificate at {address} does not name {name!r} ({detail}); dial a name or "
                    "address in its subjectAltName, or give --tls-server-name")
        return (f"the switch's certificate at {address} is not signed by the CA in --tls-ca {tls.ca} ({detail}); "
                "give the CA certificate that signed the switch's --grpc-server-cert")
    if state in ("eof", "alert"):
        if tls.cert is None:
            return (f"the switch at {address} requires a client certificate (it closed the connection after the "
                    f"handshake{': ' + detail if detail else ''}); give --tls-cert and --tls-key, signed by the CA "
                    "in the switch's --grpc-server-cacert")
        return (f"the switch at {address} refused the client certificate --tls-cert {tls.cert} "
                f"({detail or 'it closed the connection after the handshake'}); it must be signed by the CA in the "
                "switch's --grpc-server-cacert")
    return None
