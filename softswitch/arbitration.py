"""Client arbitration for one device: which StreamChannel is the primary, and who must be told.

Rules (P4Runtime spec "Client Arbitration and Controller Replication", and p4lang/PI `pi_server.cpp`, which is
what BMv2 answers):
- the first MasterArbitrationUpdate on a stream adds it: an unknown device id ends the stream with NOT_FOUND, an
  election id already used by a live client with INVALID_ARGUMENT, more than `max_connections` streams with
  RESOURCE_EXHAUSTED; later updates may change the election id (FAILED_PRECONDITION if the device id changes);
- the primary is the live client with the highest election id; a client without an election id never is;
- who is told: when the primary changes (a new or upgraded client takes over, the primary downgrades itself or
  leaves) every client gets a notification - OK for the primary, ALREADY_EXISTS for backups, NOT_FOUND for all
  when nobody can be primary; otherwise only the client that sent the update gets one;
- when the primary leaves, the live client with the next highest election id becomes primary at once (as PI
  does). The specification instead leaves the device without a primary until a client re-sends an election id
  at least as high as the old one; PI's choice lets a standby take over without a round trip, and is what
  controllers written against BMv2 expect.

Sending is delegated to each connection's `send`, which must not block (the server enqueues).
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from google.rpc import code_pb2
from p4.v1 import p4runtime_pb2

from softswitch.p4runtime.schema import bounded

log = logging.getLogger("softswitch.arbitration")

ElectionId = tuple[int, int]  # (high, low)


class ArbitrationError(Exception):
    """An arbitration update the server refuses; the stream ends with this code and message."""

    def __init__(self, code: int, message: str) -> None:
        message = bounded(message)  # it carries client data (a role name) into the grpc-message trailer
        super().__init__(message)
        self.code = code
        self.message = message


_ids = itertools.count(1)


@dataclass(eq=False)
class Connection:
    """One StreamChannel. election_id None = not yet arbitrated or sent without an election id."""

    # bytes: an already serialized StreamMessageResponse, which is always a packet-in (see SoftSwitch._packet_in)
    send: Callable[[p4runtime_pb2.StreamMessageResponse | bytes], None]
    peer: str = ""
    id: int = field(default_factory=lambda: next(_ids))
    device_id: int | None = None
    election_id: ElectionId | None = None
    role: p4runtime_pb2.Role | None = None

    @property
    def arbitrated(self) -> bool:
        return self.device_id is not None

    def __repr__(self) -> str:
        return f"<client {self.id} {self.peer} election_id={self.election_id}>"


class Arbitrator:
    def __init__(self, device_id: int, max_connections: int = 16) -> None:
        self.device_id = device_id
        self.max_connections = max_connections
        self._lock = threading.Lock()
        self._conns: list[Connection] = []
        self._highest_seen: ElectionId | None = None

    # ---- queries ------------------------------------------------------------------------------------------
    def _primary_locked(self) -> Connection | None:
        best: Connection | None = None
        for c in self._conns:
            if c.election_id is not None and (best is None or c.election_id > best.election_id):  # type: ignore[operator]
                best = c
        return best

    def primary(self) -> Connection | None:
        with self._lock:
            return self._primary_locked()

    def is_primary(self, conn: Connection) -> bool:
        with self._lock:
            return self._primary_locked() is conn

    def connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def may_write(self, election_id: ElectionId | None) -> bool:
        """Whether a Write / SetForwardingPipelineConfig carrying `election_id` comes from the primary.

        As in PI: with no client connected, requests without an election id are accepted (handy for grpc_cli and
        scripts) and requests with one are refused; otherwise the election id must be the primary's.
        """
        with self._lock:
            if not self._conns:
                return election_id is None
            primary = self._primary_locked()
            return primary is not None and election_id is not None and primary.election_id == election_id

    def send_to_primary(self, msg: p4runtime_pb2.StreamMessageResponse | bytes) -> bool:
        with self._lock:
            primary = self._primary_locked()
        if primary is None:
            return False
        primary.send(msg)
        return True

    # ---- updates ------------------------------------------------------------------------------------------
    def update(self, conn: Connection, arb: p4runtime_pb2.MasterArbitrationUpdate) -> None:
        """Handle a MasterArbitrationUpdate from `conn`; raises ArbitrationError to end the stream."""
        election_id = (arb.election_id.high, arb.election_id.low) if arb.HasField("election_id") else None
        role = arb.role if arb.HasField("role") else None
        if role is not None and role.name:
            raise ArbitrationError(code_pb2.UNIMPLEMENTED,
                                   f"role {role.name!r}: softswitch has only the default role; leave role unset")
        with self._lock:
            if not conn.arbitrated:
                if arb.device_id != self.device_id:
                    raise ArbitrationError(code_pb2.NOT_FOUND,
                                           f"unknown device id {arb.device_id}; this switch is device {self.device_id}")
                if len(self._conns) >= self.max_connections:
                    raise ArbitrationError(code_pb2.RESOURCE_EXHAUSTED,
                                           f"too many clients (at most {self.max_connections} streams)")
            elif arb.device_id != conn.device_id:
                raise ArbitrationError(code_pb2.FAILED_PRECONDITION,
                                       f"device id {arb.device_id} differs from this stream's ({conn.device_id}); "
                                       "open a new stream for another device")
            if election_id is not None and any(c.election_id == election_id for c in self._conns if c is not conn):
                raise ArbitrationError(code_pb2.INVALID_ARGUMENT,
                                       f"election id {election_id} is already used by another live client")
            old_primary = self._primary_locked()
            if not conn.arbitrated:
                conn.device_id = arb.device_id
                self._conns.append(conn)
            conn.election_id = election_id
            conn.role = role
            if election_id is not None and (self._highest_seen is None or election_id > self._highest_seen):
                self._highest_seen = election_id
            new_primary = self._primary_locked()
            if new_primary is not old_primary:
                log.info("primary is now %s (was %s)", new_primary, old_primary)
                self._notify_locked(self._conns)
            else:
                log.info("client %s is a %s", conn, "primary" if new_primary is conn else "backup")
                self._notify_locked([conn])

    def remove(self, conn: Connection) -> None:
        with self._lock:
            if conn not in self._conns:
                return
            was_primary = self._primary_locked() is conn
            self._conns.remove(conn)
            log.info("client %s left%s", conn, " (was primary)" if was_primary else "")
            if was_primary and self._conns:
                log.info("primary is now %s", self._primary_locked())
                self._notify_locked(self._conns)

    def _notify_locked(self, targets: list[Connection]) -> None:
        primary = self._primary_locked()
        for c in list(targets):
            msg = p4runtime_pb2.StreamMessageResponse()
            a = msg.arbitration
            a.device_id = self.device_id
            if c.role is not None:
                a.role.CopyFrom(c.role)
            shown = primary.election_id if primary is not None else self._highest_seen
            if shown is not None:
                a.election_id.high, a.election_id.low = shown
            if primary is None:
                a.status.code = code_pb2.NOT_FOUND
                a.status.message = "No primary"
            elif c is primary:
                a.status.code = code_pb2.OK
                a.status.message = "Is primary"
            else:
                a.status.code = code_pb2.ALREADY_EXISTS
                a.status.message = "Is backup"
            c.send(msg)
