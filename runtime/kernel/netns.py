"""The router's network namespace: create or join it, run commands in it, open sockets and TAPs inside it.

A netlink socket and a TAP belong to the namespace of the thread that opened them, so :func:`in_netns`
runs a function on a short-lived thread that has ``setns(2)``-ed into the namespace; the caller's threads
never change namespace. Commands (``ip``, ``nft``, ``sysctl``) are argv lists run with ``ip netns exec``.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

from ..errors import ConfigError

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"


class KernelError(ConfigError):
    """Something the kernel slow path cannot set up: the message names the place and the fix."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def netns_exists(name: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, name))


def in_netns(name: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` on a thread inside namespace ``name`` and return its result (or raise its error)."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            fd = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            box["error"] = KernelError(f"network namespace {name!r}: {exc.strerror}")
            return
        try:
            if _libc().setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                box["error"] = KernelError(f"cannot enter network namespace {name!r}: {os.strerror(err)} "
                                           "(the kernel slow path needs root)")
                return
        finally:
            os.close(fd)
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=run, name=f"netns-{name}", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


class NetNs:
    """A named network namespace. ``created`` says whether we made it (then :meth:`delete` removes it)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.created = False

    def ensure(self) -> NetNs:
        if shutil.which("ip") is None:
            raise KernelError("the kernel slow path needs iproute2's `ip` (apt-get install iproute2)")
        if not netns_exists(self.name):
            r = subprocess.run(["ip", "netns", "add", self.name], capture_output=True, text=True, check=False)
            if r.returncode != 0:
                raise KernelError(f"cannot create network namespace {self.name!r}: {r.stderr.strip()} "
                                  "(run as root, or name an existing one with --netns)")
            self.created = True
        return self

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)

    def run(self, argv: Sequence[str], *, what: str = "", check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the namespace; with ``check``, a failure is a :class:`KernelError` quoting
        the tool's own message."""
        r = subprocess.run(["ip", "netns", "exec", self.name, *argv], capture_output=True, text=True,
                           check=False, input=input)
        if check and r.returncode != 0:
            msg = (r.stderr or r.stdout).strip()
            raise KernelError(f"{what or ' '.join(argv)} in namespace {self.name!r} failed: {msg}")
        return r

    def ip(self, *args: str, what: str = "", check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(["ip", *args], what=what, check=check)

    def sysctl(self, key: str, value: str | int) -> None:
        """Write a sysctl of the namespace (``/proc/sys/net`` shows the opening thread's namespace)."""
        path = "/proc/sys/" + key.replace(".", "/")

        def write() -> None:
            with open(path, "w") as f:
                f.write(f"{value}\n")
        try:
            in_netns(self.name, write)
        except OSError as exc:
            raise KernelError(f"sysctl {key}={value} in namespace {self.name!r}: {exc.strerror}") from None

    def read_sysctl(self, key: str) -> str:
        path = "/proc/sys/" + key.replace(".", "/")

        def read() -> str:
            with open(path) as f:
                return f.read().strip()
        return in_netns(self.name, read)
