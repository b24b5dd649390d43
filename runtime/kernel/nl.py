"""A minimal synchronous netlink socket opened inside the router namespace; pyroute2 encodes and decodes
the messages. Synchronous on purpose: the controller asks one question at a time from one thread and
must not run an event loop of pyroute2's beside its own threads."""

from __future__ import annotations

import itertools
import os
import socket
import struct
import threading
from typing import Any

from pyroute2.netlink import NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR

from .netns import KernelError, in_netns

_HDR = struct.Struct("=IHHII")


class NetlinkError(KernelError):
    def __init__(self, what: str, code: int) -> None:
        super().__init__(f"{what}: {os.strerror(code)} (errno {code})")
        self.code = code


def open_netlink(netns: str, proto: int, groups: int = 0, rcvbuf: int = 4 << 20) -> socket.socket:
    """A netlink socket of protocol ``proto`` in ``netns``, bound to multicast ``groups``."""
    def make() -> socket.socket:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, proto)
        try:
            s.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)  # SO_RCVBUFFORCE: root may exceed rmem_max
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.bind((0, groups))
        return s
    return in_netns(netns, make)


def split(data: bytes) -> list[tuple[int, int, bytes]]:
    """(type, flags, raw message) for each netlink message in one datagram."""
    out = []
    off = 0
    while off + _HDR.size <= len(data):
        length, typ, flags, _seq, _pid = _HDR.unpack_from(data, off)
        if length < _HDR.size:
            break
        out.append((typ, flags, data[off:off + length]))
        off += (length + 3) & ~3
    return out


class NlRequester:
    """Request/answer on one netlink socket; a lock makes it safe from several threads."""

    def __init__(self, netns: str, proto: int) -> None:
        self.sock = open_netlink(netns, proto)
        self.sock.settimeout(5.0)
        self._seq = itertools.count(1)
        self._lock = threading.Lock()

    def close(self) -> None:
        self.sock.close()

    def request(self, msg: Any, msg_type: int, what: str, *, dump: bool = False,
                decoder: type | None = None, flags: int = 0) -> list[Any]:
        """Send ``msg`` (a pyroute2 message with its attrs set); return the decoded answers. An error
        answer raises :class:`NetlinkError`."""
        with self._lock:
            seq = next(self._seq)
            msg["header"]["type"] = msg_type
            msg["header"]["flags"] = NLM_F_REQUEST | (NLM_F_DUMP if dump else NLM_F_ACK) | flags
            msg["header"]["sequence_number"] = seq
            msg["header"]["pid"] = 0
            msg.encode()
            self.sock.send(msg.data)
            out: list[Any] = []
            cls = decoder or type(msg)
            while True:
                try:
                    data = self.sock.recv(1 << 20)
                except TimeoutError:
                    raise KernelError(f"{what}: no answer from the kernel") from None
                for typ, _flags, raw in split(data):
                    rseq = _HDR.unpack_from(raw)[3]
                    if rseq != seq:
                        continue
                    if typ == NLMSG_DONE:
                        return out
                    if typ == NLMSG_ERROR:
                        code = -struct.unpack_from("=i", raw, _HDR.size)[0]
                        if code:
                            raise NetlinkError(what, code)
                        return out
                    m = cls(raw)
                    m.decode()
                    out.append(m)
