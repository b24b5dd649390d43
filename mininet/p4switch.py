"""Mininet switch class for a P4Runtime switch (softswitch or BMv2), for `mn --custom mininet/p4switch.py`.

A thin shim: the class lives in offloadgen/testbed.py so that `offloadgen demo` can use it; this file keeps the
plain-script path for Mininet's own command line. This folder has no __init__.py (a package named `mininet`
would shadow Mininet). Example:

    .venv/bin/python /usr/bin/mn --custom mininet/p4switch.py --switch p4rt,kind=softswitch --controller none

(with the venv's Python: the switch class needs offloadgen's dependencies).
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

# `mn --custom` execs this file without setting __file__; the code object still knows its file name
_here = inspect.currentframe()
REPO = Path(_here.f_code.co_filename if _here else ".").resolve().parent.parent
if str(REPO) not in sys.path:  # `mn --custom` loads this file by path, from any directory
    sys.path.insert(0, str(REPO))

from offloadgen.testbed import P4RuntimeSwitch  # noqa: E402

__all__ = ["P4RuntimeSwitch"]

switches = {"p4rt": P4RuntimeSwitch}  # read by `mn --custom`
