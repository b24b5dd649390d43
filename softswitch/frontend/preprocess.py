"""A small C-style preprocessor: ``#include`` of softswitch's own core.p4/v1model.p4 and nothing else.

The generated programs only include the two architecture files; including them textually (once each) and
remembering where every line came from lets errors in either point at the original file and line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from softswitch.frontend.errors import P4FrontendError

_INCLUDE_RE = re.compile(r'^\s*#\s*include\s*(?:<([^>]+)>|"([^"]+)")\s*(?://.*)?$')
_DIRECTIVE_RE = re.compile(r"^\s*#\s*(\w+)")
SHIPPED_INCLUDES = ("core.p4", "v1model.p4")


def shipped_include(name: str) -> str:
    """The text of one of softswitch's architecture files (package data in softswitch/p4include)."""
    return (Path(__file__).resolve().parent.parent / "p4include" / name).read_text(encoding="utf-8")


@dataclass(slots=True)
class Source:
    """The preprocessed text and, for each of its lines, the file and line it came from."""

    text: str
    origins: list[tuple[str, int]]

    def locate(self, line: int, column: int) -> tuple[str, int, int]:
        if 1 <= line <= len(self.origins):
            fname, fline = self.origins[line - 1]
            return fname, fline, column
        fname, fline = self.origins[-1] if self.origins else ("<input>", 0)
        return fname, fline, column

    def error(self, line: int, column: int, message: str) -> P4FrontendError:
        return P4FrontendError(*self.locate(line, column), message)


def preprocess(text: str, filename: str) -> Source:
    out: list[str] = []
    origins: list[tuple[str, int]] = []
    seen: set[str] = set()

    def run(body: str, fname: str, depth: int) -> None:
        # A directive inside a block comment is not a directive; track /* */ roughly, line by line.
        in_comment = False
        for lineno, line in enumerate(body.split("\n"), start=1):
            stripped = line.lstrip()
            if not in_comment and stripped.startswith("#"):
                m = _INCLUDE_RE.match(line)
                col = len(line) - len(stripped) + 1
                if m is None:
                    d = _DIRECTIVE_RE.match(line)
                    name = d.group(1) if d else stripped[:20]
                    raise P4FrontendError(fname, lineno, col, f"preprocessor directive '#{name}' is not supported "
                                          "(only #include <core.p4> and #include <v1model.p4>)")
                inc = m.group(1) or m.group(2)
                if inc not in SHIPPED_INCLUDES:
                    raise P4FrontendError(fname, lineno, col, f"#include of '{inc}' is not supported (softswitch "
                                          "ships only core.p4 and v1model.p4)")
                out.append("")
                origins.append((fname, lineno))
                if inc not in seen and depth < 8:
                    seen.add(inc)
                    if inc == "v1model.p4" and "core.p4" not in seen:
                        seen.add("core.p4")
                        run(shipped_include("core.p4"), "core.p4", depth + 1)
                    run(shipped_include(inc), inc, depth + 1)
                continue
            out.append(line)
            origins.append((fname, lineno))
            # Update the comment state after the line (good enough for directives at line starts).
            pos = 0
            while True:
                if in_comment:
                    end = line.find("*/", pos)
                    if end < 0:
                        break
                    in_comment, pos = False, end + 2
                else:
                    start = line.find("/*", pos)
                    lc = line.find("//", pos)
                    if start < 0 or (0 <= lc < start):
                        break
                    in_comment, pos = True, start + 2

    run(text, filename, 0)
    return Source("\n".join(out), origins)
