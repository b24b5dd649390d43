"""ruff, mypy and the import-linter layering contracts (DESIGN.md "Parts") run with the test suite, so the
layering between softswitch, runtime and the generator cannot drift silently."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]')")
    return found


def check(argv: list[str]) -> None:
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{' '.join(argv)}:\n{proc.stdout}{proc.stderr}"


def test_ruff() -> None:
    check([tool("ruff"), "check", "."])


def test_mypy() -> None:
    check([tool("mypy")])


def test_import_contracts() -> None:
    check([tool("lint-imports")])
