"""`offloadgen build` end to end, and p4c accepting every program the profiles can produce."""

from __future__ import annotations

import dataclasses
import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from offloadgen.build import build
from offloadgen.p4c import compile_bmv2, find_p4c
from offloadgen.profile import OPTIONAL_PUNTS, Profile, load_profile
from offloadgen.render import render

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "offloadgen.cli", *args], capture_output=True, text=True, cwd=cwd,
                          check=False)


@pytest.mark.p4c
def test_build_default_with_p4c(tmp_path: Path) -> None:
    out = run_cli("build", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "ingress.flow_v4" in out.stdout and "size 65536" in out.stdout
    assert "punt reasons: 1=miss" in out.stdout and "ports: 1:lan1" in out.stdout
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["profile"]["name"] == "default" and len(manifest["profile"]["sha256"]) == 64
    assert manifest["artifacts"] == {"p4": "flowtable.p4", "p4info": "p4info.txtpb", "bmv2_json": "flowtable.json"}
    assert manifest["p4info_source"] == "p4c" and manifest["p4c_version"].startswith("1.")
    for art in manifest["artifacts"].values():
        assert (tmp_path / art).stat().st_size > 0


def test_build_without_p4c_uses_the_front_end(tmp_path: Path) -> None:
    pytest.importorskip("softswitch.frontend", reason="softswitch front end not built yet")
    result = build(load_profile(REPO / "profiles" / "minimal.toml"), tmp_path, use_p4c=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["artifacts"]["bmv2_json"] is None
    assert manifest["artifacts"]["p4info"] == "p4info.txtpb" and result.p4info_source == "softswitch"
    assert "ingress.flow_v4" in (tmp_path / "p4info.txtpb").read_text()


def test_bad_profile_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[[ports]]\nport = 1\nname = "a"\nmac = "nope"\n')
    out = run_cli("build", "--profile", str(bad), "--out", str(tmp_path / "o"))
    assert out.returncode == 2
    assert "ports[0].mac: 'nope' is not a MAC address" in out.stderr and "Traceback" not in out.stderr


def variants() -> list[tuple[str, Profile]]:
    """Every single switch off from the default, plus the shipped profiles and a few combinations."""
    default = load_profile(REPO / "profiles" / "default.toml")
    out = [(n, load_profile(REPO / "profiles" / f"{n}.toml")) for n in ("default", "minimal", "vlan")]
    for feat in ("ipv6", "nat", "counters", "idle_timeout"):
        out.append((f"no-{feat}", dataclasses.replace(default, **{feat: False})))
    out.append(("v6-only", dataclasses.replace(default, ipv4=False, nat=False)))
    for punt in OPTIONAL_PUNTS:
        out.append((f"no-{punt}", dataclasses.replace(default, punt=dataclasses.replace(default.punt, **{punt: False}))))
    none = dataclasses.replace(default.punt, **dict.fromkeys(OPTIONAL_PUNTS, False))
    out.append(("no-punts-no-counters", dataclasses.replace(default, punt=none, counters=False, idle_timeout=False)))
    for v6, nat in itertools.product((True, False), repeat=2):
        out.append((f"bare-v6{v6}-nat{nat}", dataclasses.replace(default, ipv6=v6, nat=nat, counters=False)))
    return out


@pytest.mark.p4c
@pytest.mark.parametrize("name,profile", variants(), ids=[n for n, _ in variants()])
def test_p4c_compiles_every_variant_without_warnings(tmp_path: Path, name: str, profile: Profile) -> None:
    p4c = find_p4c()
    assert p4c
    prog = tmp_path / "flowtable.p4"
    prog.write_text(render(profile))
    compile_bmv2(p4c, prog, tmp_path)  # raises P4cError on errors and on any warning
