"""Running the real p4c (`p4c-bm2-ss`) when it is installed.

p4c is found on PATH or given with --p4c; never at a fixed path. Its diagnostics are passed through with their
file:line positions, which point into the generated flowtable.p4 the user can open.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


class P4cError(RuntimeError):
    """p4c rejected the program or produced warnings (generated programs must compile cleanly)."""


@dataclass(frozen=True, slots=True)
class P4cResult:
    bmv2_json: Path
    p4info: Path
    version: str


def find_p4c(explicit: str | None = None) -> str | None:
    """The p4c-bm2-ss to use: an explicit path (must exist) or the one on PATH, else None."""
    if explicit:
        found = shutil.which(explicit)
        if not found:
            raise P4cError(f"--p4c {explicit}: not found or not executable")
        return found
    return shutil.which("p4c-bm2-ss")


def p4c_version(p4c: str) -> str:
    out = subprocess.run([p4c, "--version"], capture_output=True, text=True, check=False)
    for line in (out.stdout + out.stderr).splitlines():
        if line.startswith("Version"):
            return line.split()[1]
    return "unknown"


_WARNING_RE = re.compile(r"\[--Wwarn=|warning:", re.IGNORECASE)


def compile_bmv2(p4c: str, program: Path, out_dir: Path) -> P4cResult:
    """Compile for v1model/BMv2, writing the BMv2 JSON and p4c's P4Info (text format) next to the program."""
    bmv2_json = out_dir / "flowtable.json"
    p4info = out_dir / "p4info.txtpb"
    argv = [p4c, "--arch", "v1model", "--p4runtime-files", str(p4info), "-o", str(bmv2_json), str(program)]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    diagnostics = (proc.stderr + proc.stdout).strip()
    if proc.returncode != 0:
        raise P4cError(f"p4c-bm2-ss failed on {program}:\n{diagnostics}")
    if _WARNING_RE.search(diagnostics):
        raise P4cError(f"p4c-bm2-ss warned on {program} (generated programs must compile cleanly):\n{diagnostics}")
    return P4cResult(bmv2_json, p4info, p4c_version(p4c))
