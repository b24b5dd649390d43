"""Shared fixtures for the runtime tests: one build of the default profile per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``offloadgen build`` of profiles/default.toml (with p4c when installed, so BMv2 JSON exists)."""
    from offloadgen.build import build
    from offloadgen.profile import load_profile

    out = tmp_path_factory.mktemp("build")
    build(load_profile(REPO / "profiles" / "default.toml"), out, use_p4c=shutil.which("p4c-bm2-ss") is not None)
    return out


@pytest.fixture(scope="session")
def router_config_path() -> Path:
    return REPO / "configs" / "router.toml"
