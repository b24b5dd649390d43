"""Shared markers: tests that need root, p4c, BMv2 or Mininet skip with the reason when it is absent."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _missing(marker: str) -> str | None:
    if marker == "root" and os.geteuid() != 0:
        return "needs root (network namespaces, veth pairs, raw sockets)"
    if marker == "p4c" and shutil.which("p4c-bm2-ss") is None:
        return "p4c-bm2-ss not on PATH (install p4c; see README 'Running on BMv2')"
    if marker == "bmv2":
        for tool in ("simple_switch_grpc", "p4c-bm2-ss"):
            if shutil.which(tool) is None:
                return f"{tool} not on PATH (install BMv2 and p4c; see README 'Running on BMv2')"
    if marker == "mininet":
        try:
            import mininet.net  # noqa: F401
        except ImportError:
            return "Mininet's Python package is not importable (apt-get install mininet; scripts/setup.sh)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for marker in ("root", "p4c", "bmv2", "mininet"):
            if item.get_closest_marker(marker) is not None:
                reason = _missing(marker)
                if reason:
                    item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable
