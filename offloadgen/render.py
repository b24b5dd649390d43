"""Rendering the P4 program from the templates in p4src/.

The templates are the only description of the program: P4Info, the BMv2 JSON and the summary are all
derived from what they render, never written a second time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jinja2

from offloadgen import __version__
from offloadgen.profile import DROP_REASONS, OPTIONAL_PUNTS, PUNT_REASONS, Profile


@dataclass(frozen=True, slots=True)
class PuntReason:
    code: int
    name: str
    description: str


def punt_reasons(profile: Profile) -> tuple[PuntReason, ...]:
    """The reasons the program for this profile can report (codes are fixed whatever is switched off)."""
    needs_family = {"ip_options": profile.ipv4, "fragment": profile.ipv4, "ipv6_ext": profile.ipv6}
    out = []
    for code, (name, desc) in enumerate(PUNT_REASONS, start=1):
        if name not in OPTIONAL_PUNTS or (getattr(profile.punt, name) and needs_family.get(name, True)):
            out.append(PuntReason(code, name, desc))
    return tuple(out)


def drop_reasons(profile: Profile) -> tuple[PuntReason, ...]:
    """The drop reasons of the program for this profile (the VLAN filter exists only with VLAN ports)."""
    return tuple(PuntReason(code, name, desc) for code, (name, desc) in enumerate(DROP_REASONS, start=1)
                 if name != "vlan" or profile.vlan)


def template_dir() -> Path:
    """p4src/ lives beside the package in a checkout; an installed wheel is not supported."""
    here = Path(__file__).resolve().parent.parent / "p4src"
    if not (here / "flowtable.p4.j2").is_file():
        raise FileNotFoundError(
            f"{here}: the P4 templates are missing; run offloadgen from its source checkout (pip install -e .)"
        )
    return here


def render(profile: Profile, templates: Path | None = None) -> str:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates or template_dir())),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    families = [f for f in ("ipv4", "ipv6") if getattr(profile, f)]
    text = env.get_template("flowtable.p4.j2").render(
        p=profile, version=__version__, reasons=punt_reasons(profile), drops=drop_reasons(profile),
        families=families,
    )
    # Collapse the blank-line runs left by switched-off blocks so the program reads as hand-written.
    lines: list[str] = []
    for line in text.splitlines():
        if line.strip() == "" and lines and lines[-1].strip() == "":
            continue
        lines.append(line.rstrip())
    return "\n".join(lines).rstrip() + "\n"
