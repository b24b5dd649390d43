"""What the demo needs before it touches anything, each failure a one-line reason.

Checked up front so that a user without root or without Mininet gets a sentence, not a traceback from deep
inside Mininet half-way through building a network that then has to be torn down.
"""

from __future__ import annotations

import importlib
import os
import shutil
from collections.abc import Callable
from types import ModuleType

from offloadgen.cli import UserError
from offloadgen.switchproc import find_bmv2


def check_prerequisites(switch: str, bmv2: str | None = None, *, euid: int | None = None,
                        import_module: Callable[[str], ModuleType] = importlib.import_module,
                        which: Callable[[str], str | None] = shutil.which) -> None:
    """Raise UserError naming the first missing prerequisite. The keyword arguments exist for the tests."""
    if (os.geteuid() if euid is None else euid) != 0:
        raise UserError("needs root: Mininet creates network namespaces and veth pairs (run it with sudo)")
    try:
        import_module("mininet.net")
    except ImportError:
        raise UserError("Mininet is not installed (the Python package 'mininet' is not importable); "
                        "run scripts/setup.sh or apt-get install mininet") from None
    if which("mnexec") is None:
        raise UserError("Mininet's mnexec is not on PATH; run scripts/setup.sh or apt-get install mininet")
    if which("ethtool") is None:
        raise UserError("ethtool is not on PATH (veth offloads must be switched off); apt-get install ethtool")
    if switch == "bmv2":
        if find_bmv2(bmv2) is None:
            raise UserError("simple_switch_grpc not found on PATH; install BMv2 (README, 'Running on BMv2') "
                            "or use --switch softswitch")
        if which("p4c-bm2-ss") is None:
            raise UserError("p4c-bm2-ss not found on PATH; BMv2 needs the program compiled by p4c")
