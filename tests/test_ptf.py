"""pytest runs the PTF suite exactly as a user does: `offloadgen ptf --switch KIND --profile NAME`, with the
real ptf runner, on veth pairs, for every shipped profile."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

KINDS = ["softswitch", pytest.param("bmv2", marks=pytest.mark.bmv2)]


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize("profile", ["default", "minimal", "vlan"])
@pytest.mark.parametrize("kind", KINDS)
def test_ptf_suite(kind: str, profile: str, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "offloadgen.cli", "ptf", "--switch", kind, "--profile", profile,
                           "--log-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600,
                          check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"ptf failed:\n{out[-6000:]}\n(logs: {tmp_path})"
    assert "Ran 15 tests" in out and "\nOK" in out
