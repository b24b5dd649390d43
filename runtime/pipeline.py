"""What a switch runs: the P4Info, the target's device config and a cookie, read from an ``offloadgen build``.

The one place that knows which artifact each target takes: BMv2 (``simple_switch_grpc``) is given the BMv2 JSON
from ``p4c-bm2-ss``; softswitch is given the P4 source it executes. The cookie is a hash of P4Info and device
config, so a controller that reconnects to a switch already running the same pipeline skips the push.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from p4.config.v1 import p4info_pb2

from .errors import ConfigError
from .p4info import P4Info, parse_p4info

Target = Literal["softswitch", "bmv2"]
TARGETS: tuple[Target, ...] = ("softswitch", "bmv2")
_DEVICE_CONFIG_ARTIFACT = {"bmv2": "bmv2_json", "softswitch": "p4"}


@dataclass(frozen=True)
class Pipeline:
    p4info: P4Info
    device_config: bytes
    cookie: int
    cpu_port: int
    target: Target
    build_dir: Path | None = None

    @property
    def p4info_message(self) -> p4info_pb2.P4Info:
        return self.p4info.message


def make_cookie(p4info: p4info_pb2.P4Info, device_config: bytes) -> int:
    digest = hashlib.sha256(p4info.SerializeToString(deterministic=True) + b"\0" + device_config).digest()
    return int.from_bytes(digest[:8], "big")


def load_build(build_dir: str | Path, target: Target = "softswitch") -> Pipeline:
    """Read ``manifest.json`` and the artifacts it names from an ``offloadgen build`` output directory."""
    build = Path(build_dir)
    if target not in _DEVICE_CONFIG_ARTIFACT:
        raise ConfigError(f"unknown target {target!r}; use one of {', '.join(TARGETS)}")
    manifest_path = build / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{manifest_path}: not found; run `offloadgen build --out {build}` first") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{manifest_path}: cannot read the build manifest: {exc}") from None
    artifacts = manifest.get("artifacts") or {}
    p4info_name = artifacts.get("p4info")
    if not p4info_name:
        raise ConfigError(f"{manifest_path}: no p4info artifact; rebuild with `offloadgen build`")
    kind = _DEVICE_CONFIG_ARTIFACT[target]
    config_name = artifacts.get(kind)
    if not config_name:
        hint = " (p4c-bm2-ss was not available when it was built; install p4c and rebuild)" if target == "bmv2" else ""
        raise ConfigError(f"{manifest_path}: the build has no {kind} artifact for target {target}{hint}")
    try:
        p4info_msg = parse_p4info((build / p4info_name).read_bytes(), str(build / p4info_name))
        device_config = (build / config_name).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{build}: cannot read build artifact: {exc}") from None
    cpu_port = manifest.get("cpu_port", 255)
    if not isinstance(cpu_port, int):
        raise ConfigError(f"{manifest_path}: cpu_port must be an integer, got {cpu_port!r}")
    return Pipeline(P4Info(p4info_msg), device_config, make_cookie(p4info_msg, device_config), cpu_port, target, build)
