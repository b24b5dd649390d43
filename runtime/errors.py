"""User-facing errors of the control plane.

``P4RuntimeError`` is what every failed P4Runtime call raises: the gRPC status and, for a batched Write, one
:class:`UpdateError` per failed update (index, canonical code name, message, the update itself), decoded from
``grpc-status-details-bin`` the way the spec (section 12.3) and BMv2/PI send it. ``ConfigError`` is a bad
router config or build directory; both are printed as one line by ``offloadgen``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc


class ConfigError(ValueError):
    """A bad router config, build directory or argument; the message names the place (file and key path)."""


class P4InfoLookupError(KeyError):
    """A name or id that the P4Info does not have; the message suggests the closest names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class EncodeError(ValueError):
    """A value that cannot be encoded for a field (wrong type, too wide for its bitwidth)."""


@dataclass(frozen=True, slots=True)
class UpdateError:
    """One failed update of a batched Write."""

    index: int
    code: str  # canonical name, e.g. "ALREADY_EXISTS"
    message: str
    update: Any = None  # p4.v1.Update, when the caller's batch is known

    def __str__(self) -> str:
        what = ""
        if self.update is not None:
            what = f" ({_describe_update(self.update)})"
        return f"update {self.index}{what}: {self.code}: {self.message}"


def _describe_update(update: Any) -> str:
    try:
        kind = update.entity.WhichOneof("entity")
        typ = type(update).Type.Name(update.type)
        if kind == "table_entry":
            return f"{typ} table_entry table_id={update.entity.table_entry.table_id}"
        return f"{typ} {kind}"
    except Exception:
        return "update"


class P4RuntimeError(RuntimeError):
    """A P4Runtime RPC failed. ``code`` is the gRPC status name; ``errors`` the failed updates of a Write."""

    def __init__(self, operation: str, code: str, message: str, errors: list[UpdateError] | None = None) -> None:
        self.operation = operation
        self.code = code
        self.message = message
        self.errors: list[UpdateError] = errors or []
        super().__init__(self._text())

    def _text(self) -> str:
        if self.errors:
            detail = "; ".join(str(e) for e in self.errors)
            return f"{self.operation} failed: {len(self.errors)} update(s) failed: {detail}"
        return f"{self.operation} failed: {self.code}: {self.message}"

    @property
    def codes(self) -> set[str]:
        """Every code in the error: the per-update codes, or the RPC's own."""
        return {e.code for e in self.errors} or {self.code}

    def is_only(self, *codes: str) -> bool:
        return self.codes <= set(codes)


def code_name(code: int) -> str:
    for c in grpc.StatusCode:
        if c.value[0] == code:
            return str(c.name)
    return f"CODE_{code}"


def decode_rpc_error(operation: str, exc: grpc.RpcError, updates: list[Any] | None = None) -> P4RuntimeError:
    """Turn a gRPC error into a :class:`P4RuntimeError`, decoding per-update ``p4.v1.Error`` details.

    The details list has one entry per update of the batch in order; entries with code OK are the updates that
    succeeded (spec 12.3). A server that sends no details (or a non-Write RPC) gives just the outer status.
    """
    from google.rpc import code_pb2, status_pb2
    from p4.v1 import p4runtime_pb2

    code_obj = exc.code() if hasattr(exc, "code") else None
    outer = code_obj.name if code_obj is not None else "UNKNOWN"
    message = (exc.details() if hasattr(exc, "details") else None) or str(exc)
    errors: list[UpdateError] = []
    trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for key, value in trailing or ():
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status()
        try:
            status.ParseFromString(value)
        except Exception:
            break
        for i, detail in enumerate(status.details):
            err = p4runtime_pb2.Error()
            if not detail.Unpack(err):
                continue
            if err.canonical_code == code_pb2.OK:
                continue
            upd = updates[i] if updates is not None and i < len(updates) else None
            errors.append(UpdateError(i, code_name(err.canonical_code), err.message, upd))
    return P4RuntimeError(operation, outer, message, errors)
