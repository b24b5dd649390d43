"""softswitch's P4_16 front end: preprocess, parse (lark, LALR), check and compile a v1model program.

`load_program` is the one entry point; everything it cannot handle is a `P4FrontendError` with
file:line:column and the construct's name, never another exception.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from types import CodeType

import lark
from p4.config.v1 import p4info_pb2

from softswitch.frontend.compiler import Compiler
from softswitch.frontend.errors import P4FrontendError
from softswitch.frontend.model import ProgramModel
from softswitch.frontend.preprocess import Source, preprocess

__all__ = ["P4FrontendError", "Program", "load_program"]


@functools.cache
def _parser() -> lark.Lark:
    """The LALR parser, built once per process (building the tables takes a noticeable fraction of a second)."""
    grammar = (Path(__file__).resolve().parent.parent / "p4.lark").read_text(encoding="utf-8")
    return lark.Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=True)


@dataclass(eq=False)
class Program:
    """The parsed, checked, compiled program: its P4Info (equal to p4c's) and the generated code."""

    source: str
    filename: str
    p4info: p4info_pb2.P4Info
    model: ProgramModel
    code: CodeType


def _syntax_error(src: Source, e: lark.exceptions.LarkError) -> P4FrontendError:
    line = getattr(e, "line", 0) or 0
    column = getattr(e, "column", 0) or 0
    if isinstance(e, lark.exceptions.UnexpectedToken):
        tok = e.token
        if tok.type == "$END":
            return src.error(len(src.origins), 1, "syntax error: unexpected end of input")
        exp = sorted(e.expected)[:6]
        return src.error(line, column, f"syntax error: unexpected '{tok}' (expected one of {', '.join(exp)})")
    if isinstance(e, lark.exceptions.UnexpectedCharacters):
        pos = e.pos_in_stream or 0
        ch = src.text[pos] if pos < len(src.text) else "?"
        return src.error(line, column, f"syntax error: unexpected character '{ch}'")
    if isinstance(e, lark.exceptions.UnexpectedEOF):
        return src.error(len(src.origins), 1, "syntax error: unexpected end of input")
    return src.error(line, column, f"syntax error: {e}")


def load_program(source: str, filename: str = "flowtable.p4") -> Program:
    from softswitch.p4info import build_p4info

    src = preprocess(source, filename)
    try:
        tree = _parser().parse(src.text)
    except lark.exceptions.LarkError as e:
        raise _syntax_error(src, e) from None
    except RecursionError:
        raise src.error(1, 1, "program nested too deeply") from None
    model = Compiler(src).compile(tree)
    p4info = build_p4info(model)
    code = compile(model.code, f"<softswitch:{filename}>", "exec")
    return Program(source, filename, p4info, model, code)
