"""`offloadgen build`: profile -> flowtable.p4 -> (p4c) BMv2 JSON + P4Info -> manifest.json.

Without p4c the P4Info comes from softswitch's front end, which parses the very program written here, so the
build never describes the program twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from p4.config.v1 import p4info_pb2

from offloadgen import __version__
from offloadgen.p4c import compile_bmv2, find_p4c
from offloadgen.profile import Profile
from offloadgen.render import PuntReason, drop_reasons, punt_reasons, render

MANIFEST = "manifest.json"


@dataclass
class BuildResult:
    out_dir: Path
    profile: Profile
    p4: Path
    p4info: Path | None
    bmv2_json: Path | None
    p4info_source: str  # "p4c" or "softswitch"
    p4c_version: str | None
    reasons: tuple[PuntReason, ...] = field(default=())

    def manifest(self) -> dict[str, Any]:
        def rel(p: Path | None) -> str | None:
            return p.name if p is not None else None

        return {
            "generator": "offloadgen",
            "generator_version": __version__,
            "profile": {"name": self.profile.name, "sha256": self.profile.digest},
            "cpu_port": self.profile.cpu_port,
            "p4info_source": self.p4info_source,
            "p4c_version": self.p4c_version,
            "artifacts": {"p4": rel(self.p4), "p4info": rel(self.p4info), "bmv2_json": rel(self.bmv2_json)},
        }


def p4info_from_frontend(source: str, filename: str) -> p4info_pb2.P4Info:
    """P4Info derived by softswitch's front end from the program text (same names and ids as p4c)."""
    from softswitch.frontend import load_program  # the front end is the only other reader of P4

    return load_program(source, filename).p4info


def build(profile: Profile, out_dir: Path, p4c: str | None = None, use_p4c: bool = True) -> BuildResult:
    out_dir.mkdir(parents=True, exist_ok=True)
    source = render(profile)
    p4_path = out_dir / "flowtable.p4"
    p4_path.write_text(source)
    for stale in ("flowtable.json", "p4info.txtpb"):
        (out_dir / stale).unlink(missing_ok=True)

    compiler = find_p4c(p4c) if use_p4c else None
    if compiler:
        res = compile_bmv2(compiler, p4_path, out_dir)
        result = BuildResult(out_dir, profile, p4_path, res.p4info, res.bmv2_json, "p4c", res.version)
    else:
        info = p4info_from_frontend(source, str(p4_path))
        p4info_path = out_dir / "p4info.txtpb"
        p4info_path.write_text(text_format.MessageToString(info))
        result = BuildResult(out_dir, profile, p4_path, p4info_path, None, "softswitch", None)
    result.reasons = punt_reasons(profile)
    (out_dir / MANIFEST).write_text(json.dumps(result.manifest(), indent=2) + "\n")
    return result


def read_p4info(path: Path) -> p4info_pb2.P4Info:
    info = p4info_pb2.P4Info()
    text_format.Parse(path.read_text(), info)
    return info


def summary(result: BuildResult) -> str:
    """What a user wants to see after a build: tables and sizes, actions, punt reasons, ports."""
    prof = result.profile
    lines = [f"offloadgen build: profile {prof.name!r} -> {result.p4}"]
    if result.p4info is not None:
        info = read_p4info(result.p4info)
        actions = {a.preamble.id: a for a in info.actions}
        lines.append("tables:")
        for t in info.tables:
            keys = ", ".join(f"{m.name}/{m.bitwidth}" for m in t.match_fields)
            acts = ", ".join(actions[r.id].preamble.name.split(".")[-1] for r in t.action_refs)
            extras = []
            if t.is_const_table:
                extras.append("const")
            if t.direct_resource_ids:
                extras.append("counters")
            if t.idle_timeout_behavior == p4info_pb2.Table.NOTIFY_CONTROL:
                extras.append("idle timeout")
            size = "const" if t.is_const_table else f"size {t.size}"
            lines.append(f"  {t.preamble.name:<18} {size:<11} key ({keys}) actions ({acts})"
                         + (f" [{', '.join(extras)}]" if extras else ""))
        lines.append("actions:")
        for a in info.actions:
            params = ", ".join(f"{p.name}/{p.bitwidth}" for p in a.params)
            lines.append(f"  {a.preamble.name}({params})")
    lines.append("punt reasons: " + ", ".join(f"{r.code}={r.name}" for r in result.reasons))
    if prof.counters:
        lines.append("drop reasons (ingress.drop_counter): "
                     + ", ".join(f"{r.code}={r.name}" for r in drop_reasons(prof)))
    ports = ", ".join(
        f"{p.number}:{p.name}" + (f"/vlan{p.vlan}" if p.vlan else "") + (f"/mtu{p.mtu}" if p.mtu != 1500 else "")
        for p in prof.ports
    )
    lines.append(f"ports: {ports}; cpu port {prof.cpu_port}")
    art = result.manifest()["artifacts"]
    lines.append(
        f"artifacts: p4={art['p4']} p4info={art['p4info']} ({result.p4info_source}) bmv2_json={art['bmv2_json']}"
    )
    return "\n".join(lines)
