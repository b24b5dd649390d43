"""Check a parsed P4_16 (v1model) program and compile it into one Python module.

Why generate Python source instead of walking the tree per packet: the dataplane's fast path is plain Python,
and a generated function per control, action, table and parser state (fields as slots of one list, widths
applied as masks at compile time, constants folded) runs an order of magnitude faster than an interpreter
over the syntax tree. The module is compiled once per program and instantiated per dataplane with that
dataplane's tables and counters bound as globals.

Everything outside the supported subset stops here with a `P4FrontendError` that names the construct.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lark import Token, Tree

from softswitch.frontend.errors import P4FrontendError
from softswitch.frontend.model import (
    ActionDef,
    ActionRefDef,
    ConstEntry,
    ControllerHeaderDef,
    CounterDef,
    DirectCounterDef,
    KeyDef,
    ProgramModel,
    SerEnumDef,
    TableDef,
)
from softswitch.frontend.preprocess import SHIPPED_INCLUDES, Source

DROP_PORT = 511

# v1model / P4 constructs that exist but that softswitch does not implement: named in the error.
UNSUPPORTED_EXTERNS = {
    "register": "register", "meter": "meter", "direct_meter": "direct_meter", "action_profile": "action_profile",
    "action_selector": "action_selector", "Checksum16": "Checksum16", "hash": "hash", "random": "random",
    "digest": "digest", "clone": "clone", "clone3": "clone3", "clone_preserving_field_list": "clone",
    "resubmit": "resubmit", "resubmit_preserving_field_list": "resubmit", "recirculate": "recirculate",
    "recirculate_preserving_field_list": "recirculate", "assert": "assert",
    "assume": "assume", "log_msg": "log_msg", "verify": "verify", "static_assert": "static_assert",
    "value_set": "value_set", "Register": "Register", "Counter": "Counter", "Meter": "Meter",
}


# ---------------------------------------------------------------- types


@dataclass(frozen=True, slots=True)
class BitT:
    width: int

    def __str__(self) -> str:
        return f"bit<{self.width}>"


@dataclass(frozen=True, slots=True)
class SimpleT:
    name: str  # bool / int / error / string / void / match_kind / packet_in / packet_out

    def __str__(self) -> str:
        return self.name


BOOL = SimpleT("bool")
INT = SimpleT("int")
ERROR = SimpleT("error")
STRING = SimpleT("string")
VOID = SimpleT("void")
PACKET_IN = SimpleT("packet_in")
PACKET_OUT = SimpleT("packet_out")


@dataclass(eq=False, slots=True)
class EnumT:
    name: str
    width: int | None  # serializable enums have an underlying bit<width>
    members: dict[str, int]

    def __str__(self) -> str:
        return self.name


@dataclass(eq=False, slots=True)
class HeaderT:
    name: str
    fields: list[tuple[str, Any]]
    annotations: list[tuple[str, str, Tree]]

    def __str__(self) -> str:
        return self.name


@dataclass(eq=False, slots=True)
class StructT:
    name: str
    fields: list[tuple[str, Any]]

    def __str__(self) -> str:
        return self.name


@dataclass(eq=False, slots=True)
class ExternT:
    name: str

    def __str__(self) -> str:
        return self.name


Type = BitT | SimpleT | EnumT | HeaderT | StructT | ExternT


def width_of(t: Any) -> int | None:
    if isinstance(t, BitT):
        return t.width
    if isinstance(t, EnumT):
        return t.width
    if t is BOOL:
        return 1
    return None


# ---------------------------------------------------------------- instances and values


@dataclass(slots=True)
class HeaderInst:
    type: HeaderT
    valid: int
    fields: dict[str, int]
    path: str


@dataclass(slots=True)
class StructInst:
    type: StructT
    members: dict[str, Any]  # HeaderInst / StructInst / int (slot)
    path: str


@dataclass(slots=True)
class Val:
    """An expression's compiled form: Python code, its P4 type, its value when constant, and what it refers
    to when it is not a plain value (kind)."""

    code: str
    type: Any
    const: Any = None
    slot: int | None = None  # an assignable field / variable
    kind: str = "value"
    obj: Any = None
    path: str = ""


class Scope:
    def __init__(self, parent: Scope | None = None) -> None:
        self.parent = parent
        self.names: dict[str, Val] = {}

    def get(self, name: str) -> Val | None:
        sc: Scope | None = self
        while sc is not None:
            if name in sc.names:
                return sc.names[name]
            sc = sc.parent
        return None


class Emitter:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.ind = 0

    def __call__(self, line: str) -> None:
        self.lines.append("    " * self.ind + line)


class _Indent:
    def __init__(self, em: Emitter) -> None:
        self.em = em

    def __enter__(self) -> None:
        self.em.ind += 1

    def __exit__(self, *exc: object) -> None:
        self.em.ind -= 1


def _mask(w: int) -> int:
    return (1 << w) - 1


def ident(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


@dataclass(slots=True)
class _Block:
    """Where a compiled control/parser runs: which v1model role, its kind."""

    role: str
    name: str
    tree: Tree


@dataclass(slots=True)
class _ActionInfo:
    adef: ActionDef
    dir_params: list[tuple[str, str, int]]  # (direction, name, slot) in parameter order, directional only
    all_params: list[tuple[str | None, str, Any]]  # (direction, name, type) in order


@dataclass(slots=True)
class _Ctx:
    """What the statement compiler needs to know about the enclosing block."""

    role: str  # parser / verify / ingress / egress / compute / deparser
    in_action: bool = False
    control: str = ""


@dataclass
class Compiler:
    src: Source
    types: dict[str, Any] = field(default_factory=dict)
    globals: Scope = field(default_factory=Scope)
    errors: list[str] = field(default_factory=list)
    match_kinds: set[str] = field(default_factory=set)
    parsers: dict[str, Tree] = field(default_factory=dict)
    controls: dict[str, Tree] = field(default_factory=dict)
    main: Tree | None = None
    slots: list[Any] = field(default_factory=list)
    em: Emitter = field(default_factory=Emitter)
    actions: list[ActionDef] = field(default_factory=list)
    action_info: dict[int, _ActionInfo] = field(default_factory=dict)  # id(ActionDef) -> info
    used_actions: set[int] = field(default_factory=set)
    tables: list[TableDef] = field(default_factory=list)
    counters: list[CounterDef] = field(default_factory=list)
    direct_counters: list[DirectCounterDef] = field(default_factory=list)
    controller_headers: list[ControllerHeaderDef] = field(default_factory=list)
    ser_enums: list[SerEnumDef] = field(default_factory=list)
    tmp: int = 0

    # ------------------------------------------------------------ errors and positions

    def err(self, node: Tree | Token | None, message: str) -> P4FrontendError:
        line, col = 0, 0
        if isinstance(node, Token):
            line, col = node.line or 0, node.column or 0
        elif isinstance(node, Tree):
            meta = node.meta
            if not getattr(meta, "empty", True):
                line, col = meta.line, meta.column
            else:
                for tok in node.scan_values(lambda v: isinstance(v, Token)):
                    line, col = tok.line or 0, tok.column or 0
                    break
        return self.src.error(line, col, message)

    def is_user(self, node: Tree | Token) -> bool:
        line = node.line if isinstance(node, Token) else getattr(node.meta, "line", 0)
        fname, _, _ = self.src.locate(line or 0, 0)
        return fname not in SHIPPED_INCLUDES

    def text(self, node: Tree) -> str:
        return self.src.text[node.meta.start_pos:node.meta.end_pos]

    # ------------------------------------------------------------ annotations

    def annotations(self, node: Tree | None) -> list[tuple[str, str, Tree]]:
        """(name, argument source text, tree) for each annotation."""
        out: list[tuple[str, str, Tree]] = []
        if node is None:
            return out
        for a in node.children:
            name = str(a.children[0].children[0])
            args = a.children[1]
            out.append((name, self.text(args) if args is not None else "", a))
        return out

    @staticmethod
    def ann_text(anns: list[tuple[str, str, Tree]], skip: tuple[str, ...] = ("name", "id", "hidden")) -> list[str]:
        return [f"@{n}({t})" if t else f"@{n}" for n, t, _ in anns if n not in skip]

    def ann_string(self, anns: list[tuple[str, str, Tree]], name: str) -> str | None:
        for n, t, tree in anns:
            if n == name:
                t = t.strip()
                if len(t) < 2 or not t.startswith('"') or not t.endswith('"'):
                    raise self.err(tree, f"@{name} takes one string argument")
                return t[1:-1]
        return None

    # ------------------------------------------------------------ types

    def resolve_type(self, t: Tree) -> Any:
        d = t.data
        if d == "bit_type":
            w = self.int_literal(t.children[0])
            if w <= 0:
                raise self.err(t, "bit<0> is not supported")
            return BitT(w)
        if d == "bit1_type":
            return BitT(1)
        if d == "bool_type":
            return BOOL
        if d == "void_type":
            return VOID
        if d == "error_type":
            return ERROR
        if d == "packet_in_type":
            return PACKET_IN
        if d == "packet_out_type":
            return PACKET_OUT
        if d == "int_type":
            raise self.err(t, "signed integers (int<N>) are not supported by softswitch")
        if d == "varbit_type":
            raise self.err(t, "varbit is not supported by softswitch")
        if d == "named_type":
            name = str(t.children[0])
            if name in self.types:
                return self.types[name]
            if name in UNSUPPORTED_EXTERNS:
                raise self.err(t, f"extern '{name}' is not supported by softswitch")
            raise self.err(t, f"unknown type '{name}'")
        if d == "specialized_type":
            name = str(t.children[0])
            if name in UNSUPPORTED_EXTERNS:
                raise self.err(t, f"extern '{name}' is not supported by softswitch")
            if name in self.types:
                return self.types[name]
            raise self.err(t, f"generic type '{name}<...>' is not supported by softswitch")
        raise self.err(t, f"type '{d}' is not supported")

    def int_literal(self, tok: Any) -> int:
        v = self.parse_number(tok)
        return v[0]

    def parse_number(self, tok: Any) -> tuple[int, int | None]:
        s = str(tok).replace("_", "")
        width: int | None = None
        if "w" in s or "s" in s.lstrip("0123456789")[:1]:
            i = 0
            while s[i].isdigit():
                i += 1
            if s[i] == "s":
                raise self.err(tok, f"signed integer literal '{tok}' is not supported by softswitch")
            width = int(s[:i])
            s = s[i + 1:]
        low = s.lower()
        if low.startswith("0x"):
            v = int(low[2:], 16)
        elif low.startswith("0b"):
            v = int(low[2:], 2)
        elif low.startswith("0o"):
            v = int(low[2:], 8)
        elif low.startswith("0d"):
            v = int(low[2:], 10)
        else:
            v = int(low, 10)
        if width is not None:
            if width <= 0:
                raise self.err(tok, f"literal '{tok}' has width 0")
            v &= _mask(width)
        return v, width

    # ------------------------------------------------------------ pass 1: declarations

    def declare(self, tree: Tree) -> None:
        for d in tree.children:
            if not isinstance(d, Tree):
                continue
            k = d.data
            if k == "const_decl":
                self.const_decl(d, self.globals)
            elif k == "typedef_decl":
                self.types[str(d.children[2])] = self.resolve_type(d.children[1])
            elif k in ("header_decl", "struct_decl"):
                anns = self.annotations(d.children[0])
                name = str(d.children[1])
                fields: list[tuple[str, Any]] = []
                for f in d.children[2:]:
                    if f.data == "stack_field":
                        raise self.err(f, f"header stack '{f.children[3]}' is not supported by softswitch")
                    ft = self.resolve_type(f.children[1])
                    fname = str(f.children[2])
                    if (k == "header_decl" and width_of(ft) is None) or (k == "header_decl" and ft is BOOL):
                        raise self.err(f, f"header field '{fname}' has type {ft}: only bit<N> and serializable "
                                       "enums are supported in headers")
                    if k == "struct_decl" and isinstance(ft, ExternT):
                        raise self.err(f, f"struct field '{fname}' of extern type {ft}")
                    fields.append((fname, ft))
                if k == "header_decl":
                    total = sum(width_of(ft) or 0 for _, ft in fields)
                    if total % 8:
                        raise self.err(d, f"header '{name}' is {total} bits wide, not a multiple of 8")
                    ht = HeaderT(name, fields, anns)
                    self.types[name] = ht
                    cname = self.ann_string(anns, "controller_header")
                    if cname is not None:
                        self.controller_headers.append(ControllerHeaderDef(
                            cname, name, self.ann_text(anns), [(n, width_of(t) or 0) for n, t in fields]))
                else:
                    self.types[name] = StructT(name, fields)
            elif k == "header_union_decl":
                raise self.err(d, f"header_union '{d.children[1]}' is not supported by softswitch")
            elif k == "value_set_decl":
                raise self.err(d, "value_set is not supported by softswitch")
            elif k == "enum_decl":
                name = str(d.children[1])
                enames = [str(m) for m in d.children[2:] if isinstance(m, Token)]
                self.types[name] = EnumT(name, None, {m: i for i, m in enumerate(enames)})
            elif k == "ser_enum_decl":
                w = self.int_literal(d.children[1])
                name = str(d.children[2])
                members: dict[str, int] = {}
                for m in d.children[3:]:
                    if not isinstance(m, Tree):
                        continue
                    v = self.expr(m.children[1], self.globals)
                    if v.const is None or isinstance(v.const, bool):
                        raise self.err(m, f"enum member '{m.children[0]}' needs a constant value")
                    members[str(m.children[0])] = v.const & _mask(w)
                self.types[name] = EnumT(name, w, members)
                self.ser_enums.append(SerEnumDef(name, w, list(members.items())))
            elif k == "error_decl":
                names = [str(m) for m in d.children if isinstance(m, Token)]
                for n in names:
                    if n not in self.errors:
                        self.errors.append(n)
            elif k == "match_kind_decl":
                self.match_kinds.update(str(m) for m in d.children if isinstance(m, Token))
            elif k == "extern_decl":
                name = str(d.children[1])
                if self.is_user(d):
                    raise self.err(d, f"extern declaration '{name}' is not supported: softswitch implements only "
                                   "the v1model externs it declares")
                self.types[name] = {"packet_in": PACKET_IN, "packet_out": PACKET_OUT}.get(name) or ExternT(name)
            elif k == "extern_func_decl":
                name = str(d.children[2])
                if self.is_user(d):
                    raise self.err(d, f"extern function declaration '{name}' is not supported")
                self.globals.names[name] = Val(name, VOID, kind="extfunc", obj=name)
            elif k in ("parser_type_decl", "control_type_decl", "package_decl"):
                if self.is_user(d):
                    raise self.err(d, f"{k.split('_')[0]} type declaration '{d.children[1]}' is not supported")
                self.types[str(d.children[1])] = ExternT(str(d.children[1]))
            elif k == "parser_decl":
                self.parsers[str(d.children[1])] = d
            elif k == "control_decl":
                self.controls[str(d.children[1])] = d
            elif k == "action_decl":
                self.action_decl(d, self.globals, "")
            elif k == "instantiation":
                tname = d.children[1]
                iname = str(d.children[3])
                if tname.data == "named_type" and str(tname.children[0]) == "V1Switch" and iname == "main":
                    self.main = d
                else:
                    what = str(tname.children[0]) if tname.children and isinstance(tname.children[0], Token) else tname.data
                    if what in UNSUPPORTED_EXTERNS:
                        raise self.err(d, f"extern '{what}' is not supported by softswitch")
                    raise self.err(d, f"top-level instantiation '{iname}' of {what} is not supported (only "
                                   "'V1Switch(...) main')")
            else:
                raise self.err(d, f"declaration '{k}' is not supported")

    def const_decl(self, d: Tree, sc: Scope) -> None:
        t = self.resolve_type(d.children[1])
        name = str(d.children[2])
        v = self.convert(self.expr(d.children[3], sc), t, d.children[3])
        if v.const is None:
            raise self.err(d, f"constant '{name}' needs a compile-time value")
        sc.names[name] = Val(repr(v.const), t, v.const, path=name)

    # ------------------------------------------------------------ state layout

    def alloc(self, init: Any) -> int:
        self.slots.append(init)
        return len(self.slots) - 1

    def instantiate(self, t: Any, path: str) -> Any:
        if isinstance(t, HeaderT):
            valid = self.alloc(0)
            return HeaderInst(t, valid, {n: self.alloc(0) for n, _ in t.fields}, path)
        if isinstance(t, StructT):
            return StructInst(t, {n: self.instantiate(ft, f"{path}.{n}") for n, ft in t.fields}, path)
        if t is BOOL:
            return self.alloc(False)
        if width_of(t) is not None or t is ERROR or isinstance(t, EnumT):
            return self.alloc(0)
        raise ValueError(f"cannot instantiate {t}")

    def inst_val(self, inst: Any, t: Any, path: str) -> Val:
        if isinstance(inst, HeaderInst):
            return Val("", inst.type, kind="header", obj=inst, path=path)
        if isinstance(inst, StructInst):
            return Val("", inst.type, kind="struct", obj=inst, path=path)
        return Val(f"s[{inst}]", t, slot=inst, path=path)

    # ------------------------------------------------------------ expressions

    def new_tmp(self) -> str:
        self.tmp += 1
        return f"_t{self.tmp}"

    def convert(self, v: Val, t: Any, node: Tree | Token) -> Val:
        """Implicit conversion of v to type t for an assignment or argument (P4's rules, restricted)."""
        if v.kind != "value":
            raise self.err(node, f"'{v.path or v.kind}' is not a value")
        if v.type == t or v.type is t:
            return v
        if isinstance(t, BitT):
            if v.type is INT:
                c = v.const & _mask(t.width)
                return Val(repr(c), t, c)
            if isinstance(v.type, EnumT) and v.type.width == t.width:
                return Val(v.code, t, v.const, v.slot)
        if isinstance(t, EnumT) and t.width is not None and v.type is INT:
            c = v.const & _mask(t.width)
            return Val(repr(c), t, c)
        if isinstance(t, EnumT) and isinstance(v.type, BitT) and t.width == v.type.width:
            return Val(v.code, t, v.const, v.slot)
        raise self.err(node, f"type mismatch: expected {t}, got {v.type}")

    def unify(self, a: Val, b: Val, node: Tree, op: str) -> tuple[Val, Val, Any]:
        if a.kind != "value" or b.kind != "value":
            raise self.err(node, f"operator '{op}' needs values")
        ta, tb = a.type, b.type
        if ta is INT and tb is INT:
            return a, b, INT
        if ta is INT:
            return self.convert(a, tb, node), b, tb
        if tb is INT:
            return a, self.convert(b, ta, node), ta
        if isinstance(ta, EnumT) and ta.width is not None and isinstance(tb, BitT):
            return self.convert(a, tb, node), b, tb
        if isinstance(tb, EnumT) and tb.width is not None and isinstance(ta, BitT):
            return a, self.convert(b, ta, node), ta
        if ta != tb and ta is not tb:
            raise self.err(node, f"operator '{op}': operands have different types {ta} and {tb}")
        return a, b, ta

    @staticmethod
    def fold(code: str, t: Any, *vals: Val) -> Val:
        if all(v.const is not None for v in vals):
            c = eval(code, {"__builtins__": {}, "min": min, "max": max})  # only literals: folded at compile time
            return Val(repr(c), t, c)
        return Val(code, t)

    def expr(self, t: Tree | Token, sc: Scope) -> Val:
        if isinstance(t, Token):
            raise self.err(t, f"unexpected '{t}'")
        d = t.data
        if d == "number":
            num, w = self.parse_number(t.children[0])
            return Val(repr(num), BitT(w) if w else INT, num)
        if d == "true":
            return Val("True", BOOL, True)
        if d == "false":
            return Val("False", BOOL, False)
        if d == "string":
            return Val(str(t.children[0]), STRING, str(t.children[0]), kind="string")
        if d == "name":
            name = str(t.children[0])
            v = sc.get(name)
            if v is None:
                if name in self.types:
                    ty = self.types[name]
                    return Val("", ty, kind="type", obj=ty, path=name)
                if name in UNSUPPORTED_EXTERNS:
                    raise self.err(t, f"'{name}' ({UNSUPPORTED_EXTERNS[name]}) is not supported by softswitch")
                raise self.err(t, f"unknown name '{name}'")
            return v
        if d == "top_name":
            v = self.globals.get(str(t.children[0]))
            if v is None:
                raise self.err(t, f"unknown name '.{t.children[0]}'")
            return v
        if d == "error_const":
            n = str(t.children[0])
            if n not in self.errors:
                raise self.err(t, f"unknown error 'error.{n}'")
            i = self.errors.index(n)
            return Val(repr(i), ERROR, i)
        if d == "member":
            return self.member(t, sc)
        if d == "call":
            return self.call_expr(t, sc)
        if d == "slice":
            v = self.expr(t.children[0], sc)
            w = width_of(v.type) if v.kind == "value" and isinstance(v.type, BitT) else None
            if w is None:
                raise self.err(t, f"slice of a non-bit<N> value ({v.type})")
            hi = self.expr(t.children[1], sc)
            lo = self.expr(t.children[2], sc)
            if hi.const is None or lo.const is None:
                raise self.err(t, "slice bounds must be constants")
            h, low = int(hi.const), int(lo.const)
            if not (0 <= low <= h < w):
                raise self.err(t, f"slice [{h}:{low}] out of range for {v.type}")
            nw = h - low + 1
            r = self.fold(f"(({v.code} >> {low}) & {_mask(nw)})", BitT(nw), v)
            r.obj = (v, h, low)
            r.path = f"{v.path}[{h}:{low}]"
            return r
        if d == "index":
            raise self.err(t, "array indexing (header stacks) is not supported by softswitch")
        if d == "cast":
            return self.cast(t, sc)
        if d == "lnot":
            v = self.expr(t.children[0], sc)
            if v.type is not BOOL:
                raise self.err(t, f"'!' needs a bool, got {v.type}")
            return self.fold(f"(not {v.code})", BOOL, v)
        if d == "bnot":
            v = self.expr(t.children[0], sc)
            if not isinstance(v.type, BitT):
                raise self.err(t, f"'~' needs bit<N>, got {v.type}")
            return self.fold(f"({v.code} ^ {_mask(v.type.width)})", v.type, v)
        if d == "neg":
            v = self.expr(t.children[0], sc)
            if v.type is INT:
                return Val(repr(-v.const), INT, -v.const)
            if not isinstance(v.type, BitT):
                raise self.err(t, f"unary '-' needs bit<N>, got {v.type}")
            return self.fold(f"((-{v.code}) & {_mask(v.type.width)})", v.type, v)
        if d == "pos":
            return self.expr(t.children[0], sc)
        if d in ("lor", "land"):
            a = self.expr(t.children[0], sc)
            b = self.expr(t.children[1], sc)
            if a.type is not BOOL or b.type is not BOOL:
                raise self.err(t, f"'{'||' if d == 'lor' else '&&'}' needs bool operands")
            op = "or" if d == "lor" else "and"
            return self.fold(f"({a.code} {op} {b.code})", BOOL, a, b)
        if d in ("bor", "bxor", "band"):
            op = {"bor": "|", "bxor": "^", "band": "&"}[d]
            return self.binop(t, op, self.expr(t.children[0], sc), self.expr(t.children[1], sc))
        if d == "binop":
            return self.binop(t, str(t.children[1]), self.expr(t.children[0], sc), self.expr(t.children[2], sc))
        if d == "conditional":
            raise self.err(t, "the conditional operator '?:' is not supported by softswitch")
        if d == "list_expr":
            raise self.err(t, "a list expression '{...}' is only supported as the data of a checksum")
        if d == "dontcare_arg":
            raise self.err(t, "'_' is not supported here")
        raise self.err(t, f"expression '{d}' is not supported")

    def binop(self, t: Tree, op: str, a: Val, b: Val) -> Val:
        if op in ("==", "!="):
            a, b, ty = self.unify(a, b, t, op)
            return self.fold(f"({a.code} {op} {b.code})", BOOL, a, b)
        if op in ("<", ">", "<=", ">="):
            a, b, ty = self.unify(a, b, t, op)
            if not (isinstance(ty, BitT) or ty is INT):
                raise self.err(t, f"'{op}' needs bit<N> operands, got {ty}")
            return self.fold(f"({a.code} {op} {b.code})", BOOL, a, b)
        if op == "++":
            if a.type is INT or b.type is INT:
                raise self.err(t, "'++' needs operands of known width (use a width literal like 8w0)")
            wa, wb = width_of(a.type), width_of(b.type)
            if not isinstance(a.type, BitT) or not isinstance(b.type, BitT) or wa is None or wb is None:
                raise self.err(t, "'++' needs bit<N> operands")
            return self.fold(f"(({a.code} << {wb}) | {b.code})", BitT(wa + wb), a, b)
        if op in ("<<", ">>"):
            if b.type is not INT and not isinstance(b.type, BitT):
                raise self.err(t, f"shift amount must be unsigned, got {b.type}")
            if a.type is INT:
                if b.const is None:
                    raise self.err(t, "shift of an integer literal by a non-constant: give the literal a width")
                return self.fold(f"({a.code} {op} {b.code})", INT, a, b)
            if not isinstance(a.type, BitT):
                raise self.err(t, f"'{op}' needs bit<N>, got {a.type}")
            if op == "<<":
                return self.fold(f"(({a.code} << {b.code}) & {_mask(a.type.width)})", a.type, a, b)
            return self.fold(f"({a.code} >> {b.code})", a.type, a, b)
        if op in ("|+|", "|-|", "/", "%"):
            a, b, ty = self.unify(a, b, t, op)
            if ty is INT:
                pyop = {"|+|": "+", "|-|": "-", "/": "//", "%": "%"}[op]
                return self.fold(f"({a.code} {pyop} {b.code})", INT, a, b)
            if not isinstance(ty, BitT):
                raise self.err(t, f"'{op}' needs bit<N>, got {ty}")
            m = _mask(ty.width)
            if op == "|+|":
                return self.fold(f"min({a.code} + {b.code}, {m})", ty, a, b)
            if op == "|-|":
                return self.fold(f"max({a.code} - {b.code}, 0)", ty, a, b)
            raise self.err(t, f"operator '{op}' is not supported by softswitch (BMv2 support differs)")
        if op in ("+", "-", "*", "&", "|", "^"):
            a, b, ty = self.unify(a, b, t, op)
            if ty is INT:
                return self.fold(f"({a.code} {op} {b.code})", INT, a, b)
            if not isinstance(ty, BitT):
                raise self.err(t, f"'{op}' needs bit<N> operands, got {ty}")
            if op in ("&", "|", "^"):
                return self.fold(f"({a.code} {op} {b.code})", ty, a, b)
            return self.fold(f"(({a.code} {op} {b.code}) & {_mask(ty.width)})", ty, a, b)
        raise self.err(t, f"operator '{op}' is not supported")

    def cast(self, t: Tree, sc: Scope) -> Val:
        target = self.resolve_type(t.children[0])
        v = self.expr(t.children[1], sc)
        if v.kind != "value":
            raise self.err(t, "cast of a non-value")
        if isinstance(target, BitT):
            m = _mask(target.width)
            if v.type is BOOL:
                return self.fold(f"(1 if {v.code} else 0)", target, v)
            if v.type is INT or isinstance(v.type, BitT) or (isinstance(v.type, EnumT) and v.type.width):
                src_w = width_of(v.type)
                if src_w is not None and src_w <= target.width:
                    r = Val(v.code, target, v.const)
                    return r
                return self.fold(f"({v.code} & {m})", target, v)
        if target is BOOL and isinstance(v.type, BitT) and v.type.width == 1:
            return self.fold(f"({v.code} == 1)", BOOL, v)
        if target is BOOL and v.type is BOOL:
            return v
        raise self.err(t, f"cast from {v.type} to {target} is not supported")

    def member(self, t: Tree, sc: Scope) -> Val:
        obj = self.expr(t.children[0], sc)
        name = str(t.children[1].children[0])
        path = f"{obj.path}.{name}" if obj.path else name
        if obj.kind == "struct":
            inst: StructInst = obj.obj
            if name not in inst.members:
                raise self.err(t, f"struct {inst.type.name} has no member '{name}'")
            ft = dict(inst.type.fields)[name]
            return self.inst_val(inst.members[name], ft, path)
        if obj.kind == "header":
            hinst: HeaderInst = obj.obj
            if name in hinst.fields:
                ft = dict(hinst.type.fields)[name]
                return Val(f"s[{hinst.fields[name]}]", ft, slot=hinst.fields[name], path=path)
            if name in ("isValid", "setValid", "setInvalid"):
                return Val("", VOID, kind="method", obj=(obj, name), path=path)
            raise self.err(t, f"header {hinst.type.name} has no field '{name}'")
        if obj.kind == "type":
            ty = obj.obj
            if isinstance(ty, EnumT):
                if name not in ty.members:
                    raise self.err(t, f"enum {ty.name} has no member '{name}'")
                c = ty.members[name]
                return Val(repr(c), ty, c, path=path)
            raise self.err(t, f"'{obj.path}.{name}': member of type {ty} is not supported")
        if obj.kind in ("table", "counter", "dcounter", "packet"):
            return Val("", VOID, kind="method", obj=(obj, name), path=path)
        if obj.kind == "apply_result":
            tdef: TableDef = obj.obj
            if name == "hit":
                return Val(f"{obj.code}[0]", BOOL, path=path)
            if name == "miss":
                return Val(f"(not {obj.code}[0])", BOOL, path=path)
            if name == "action_run":
                return Val(obj.code, VOID, kind="action_run", obj=tdef, path=path)
            raise self.err(t, f"table apply result has no member '{name}'")
        if obj.kind == "value":
            raise self.err(t, f"value of type {obj.type} has no member '{name}'")
        raise self.err(t, f"'{path}' is not supported")

    def call_expr(self, t: Tree, sc: Scope) -> Val:
        callee = self.expr(t.children[0], sc)
        args = t.children[1].children if t.children[1] is not None else []
        if callee.kind == "method":
            obj, m = callee.obj
            if obj.kind == "header" and m == "isValid":
                if args:
                    raise self.err(t, "isValid() takes no arguments")
                return Val(f"s[{obj.obj.valid}]", BOOL, path=f"{obj.path}.isValid()")
            if obj.kind == "table" and m == "apply":
                if args:
                    raise self.err(t, "apply() takes no arguments")
                tdef: TableDef = obj.obj
                return Val(f"{tdef.func}(s)", VOID, kind="apply_result", obj=tdef, path=obj.path)
        raise self.err(t, f"call of '{callee.path or callee.kind}' is not supported in an expression")

    # ------------------------------------------------------------ statements

    def block(self, t: Tree, sc: Scope, ctx: _Ctx) -> None:
        inner = Scope(sc)
        n = len(self.em.lines)
        for st in t.children:
            self.stmt(st, inner, ctx)
        if len(self.em.lines) == n:
            self.em("pass")

    def body(self, t: Tree, sc: Scope, ctx: _Ctx) -> None:
        if t.data == "block":
            self.block(t, sc, ctx)
        else:
            n = len(self.em.lines)
            self.stmt(t, Scope(sc), ctx)
            if len(self.em.lines) == n:
                self.em("pass")

    def assign_to(self, target: Val, value: Val, node: Tree) -> None:
        em = self.em
        if target.kind != "value":
            raise self.err(node, f"assignment to '{target.path}' ({target.kind}) is not supported: assign fields")
        if target.slot is None and target.obj is None:
            raise self.err(node, f"'{target.path}' is not assignable")
        if target.slot is not None:
            v = self.convert(value, target.type, node)
            em(f"s[{target.slot}] = {v.code}")
            return
        base, h, low = target.obj
        if base.slot is None:
            raise self.err(node, f"'{target.path}' is not assignable")
        v = self.convert(value, target.type, node)
        m = _mask(h - low + 1) << low
        em(f"s[{base.slot}] = (s[{base.slot}] & {_mask(width_of(base.type) or 0) ^ m}) | (({v.code}) << {low} & {m})")

    def stmt(self, t: Tree, sc: Scope, ctx: _Ctx) -> None:
        em = self.em
        d = t.data
        if d == "assign":
            target = self.expr(t.children[0], sc)
            self.assign_to(target, self.expr(t.children[1], sc), t)
        elif d == "call_stmt":
            self.call_stmt(t.children[0], sc, ctx)
        elif d == "if_stmt":
            c = self.expr(t.children[0], sc)
            if c.type is not BOOL:
                raise self.err(t.children[0], f"if condition must be bool, got {c.type}")
            em(f"if {c.code}:")
            with _Indent(em):
                self.body(t.children[1], sc, ctx)
            if len(t.children) > 2 and t.children[2] is not None:
                em("else:")
                with _Indent(em):
                    self.body(t.children[2], sc, ctx)
        elif d == "block":
            self.block(t, sc, ctx)
        elif d == "switch_stmt":
            self.switch(t, sc, ctx)
        elif d == "var_decl":
            ty = self.resolve_type(t.children[0])
            name = str(t.children[1])
            if isinstance(ty, HeaderT | StructT):
                raise self.err(t, f"local variable '{name}' of type {ty} is not supported (only bit<N>/bool)")
            if width_of(ty) is None and ty is not ERROR:
                raise self.err(t, f"local variable '{name}' of type {ty} is not supported")
            slot = self.alloc(False if ty is BOOL else 0)
            init = self.convert(self.expr(t.children[2], sc), ty, t) if t.children[2] is not None else None
            em(f"s[{slot}] = {init.code if init else ('False' if ty is BOOL else '0')}")
            sc.names[name] = Val(f"s[{slot}]", ty, slot=slot, path=name)
        elif d == "const_decl":
            self.const_decl(t, sc)
        elif d == "exit_stmt":
            if ctx.role == "parser":
                raise self.err(t, "exit is not allowed in a parser")
            em("raise _Exit")
        elif d == "return_stmt":
            if t.children[0] is not None:
                raise self.err(t, "return with a value is not supported (no functions)")
            if ctx.role == "parser":
                raise self.err(t, "return is not allowed in a parser")
            em("return")
        elif d == "empty_stmt":
            pass
        else:
            raise self.err(t, f"statement '{d}' is not supported")

    def switch(self, t: Tree, sc: Scope, ctx: _Ctx) -> None:
        em = self.em
        v = self.expr(t.children[0], sc)
        if v.kind != "action_run":
            raise self.err(t, "switch is supported only on 'table.apply().action_run'")
        tdef: TableDef = v.obj
        var = self.new_tmp()
        em(f"{var} = {v.code}[1]")
        pending: list[str] = []
        first = True
        seen_default = False
        local_names = {ar.action.name.split(".")[-1]: ar.action for ar in tdef.actions}
        for case in t.children[1:]:
            label = case.children[0]
            ltxt = str(label.children[0])
            if ltxt == "default":
                seen_default = True
            else:
                a = local_names.get(ltxt) or next((ar.action for ar in tdef.actions if ar.action.name == ltxt), None)
                if a is None:
                    raise self.err(label, f"'{ltxt}' is not an action of table {tdef.name}")
                pending.append(a.func)
            if case.children[1] is None:
                continue
            if (seen_default and not pending) or seen_default:
                em("else:" if not first else "if True:")
            else:
                cond = " or ".join(f"{var} == {f!r}" for f in pending)
                em(f"{'if' if first else 'elif'} {cond}:")
            first = False
            pending = []
            with _Indent(em):
                self.block(case.children[1], sc, ctx)
            if seen_default:
                break

    def arg_list(self, t: Tree) -> list[Any]:
        args = t.children[1]
        return list(args.children) if args is not None else []

    def call_stmt(self, t: Tree, sc: Scope, ctx: _Ctx) -> None:
        em = self.em
        if t.data != "call":
            raise self.err(t, "expression statement is not a call")
        args = self.arg_list(t)
        callee = self.expr(t.children[0], sc)
        if callee.kind == "method":
            obj, m = callee.obj
            if obj.kind == "header":
                hinst: HeaderInst = obj.obj
                if args:
                    raise self.err(t, f"{m}() takes no arguments")
                if m == "setValid":
                    em(f"s[{hinst.valid}] = 1")
                elif m == "setInvalid":
                    em(f"s[{hinst.valid}] = 0")
                return
            if obj.kind == "table" and m == "apply":
                em(f"{obj.obj.func}(s)")
                return
            if obj.kind == "counter" and m == "count":
                cdef, var = obj.obj
                if len(args) != 1:
                    raise self.err(t, "count() takes the index")
                idx = self.convert(self.expr(args[0], sc), BitT(32), t)
                iv = self.new_tmp()
                em(f"{iv} = {idx.code}")
                em(f"if {iv} < {cdef.size}:")
                with _Indent(em):
                    if cdef.unit in ("PACKETS", "BOTH"):
                        em(f"{var}_p[{iv}] += 1")
                    if cdef.unit in ("BYTES", "BOTH"):
                        em(f"{var}_b[{iv}] += s[{self.inlen}]")
                return
            if obj.kind == "dcounter" and m == "count":
                return  # BMv2 counts direct counters on every hit anyway
            if obj.kind == "packet":
                if obj.obj == "in" and m == "extract":
                    if ctx.role != "parser":
                        raise self.err(t, "extract outside a parser")
                    if len(args) != 1:
                        raise self.err(t, "extract with a variable-size argument (varbit) is not supported")
                    self.extract(args[0], sc)
                    return
                if obj.obj == "out" and m == "emit":
                    if len(args) != 1:
                        raise self.err(t, "emit takes one header")
                    self.emit(self.expr(args[0], sc), args[0])
                    return
                raise self.err(t, f"packet_{obj.obj}.{m}() is not supported by softswitch")
            raise self.err(t, f"method '{callee.path}' is not supported")
        if callee.kind == "action":
            if ctx.role == "parser":
                raise self.err(t, "action call in a parser")
            self.action_call(callee, args, sc, t)
            return
        if callee.kind == "extfunc":
            self.extern_call(t, str(callee.obj), args, sc, ctx)
            return
        if callee.kind in ("control", "parser"):
            raise self.err(t, f"invoking '{callee.path}' (nested {callee.kind}) is not supported by softswitch")
        raise self.err(t, f"'{callee.path or callee.kind}' is not callable")

    def extern_call(self, t: Tree, name: str, args: list[Any], sc: Scope, ctx: _Ctx) -> None:
        em = self.em
        if name == "mark_to_drop":
            if len(args) != 1:
                raise self.err(t, "mark_to_drop takes standard_metadata")
            v = self.expr(args[0], sc)
            if v.kind != "struct" or v.obj is not self.sm:
                raise self.err(t, "mark_to_drop's argument must be standard_metadata")
            em(f"s[{self.sm.members['egress_spec']}] = {DROP_PORT}")
            em(f"s[{self.sm.members['mcast_grp']}] = 0")
            return
        if name == "truncate":
            if len(args) != 1:
                raise self.err(t, "truncate takes the length in bytes")
            if ctx.role not in ("ingress", "egress"):
                raise self.err(t, "truncate is only supported in ingress and egress")
            v = self.convert(self.expr(args[0], sc), BitT(32), args[0])
            em(f"s[{self.trunc}] = {v.code}")
            return
        if name in ("verify_checksum", "update_checksum", "verify_checksum_with_payload",
                    "update_checksum_with_payload"):
            if len(args) != 4:
                raise self.err(t, f"{name} takes (condition, data, checksum, algorithm)")
            if name.startswith("verify") and ctx.role != "verify":
                raise self.err(t, f"{name} is only supported in the checksum verification control")
            if name.startswith("update") and ctx.role != "compute":
                raise self.err(t, f"{name} is only supported in the checksum computation control")
            cond = self.expr(args[0], sc)
            if cond.type is not BOOL:
                raise self.err(args[0], "checksum condition must be bool")
            if not isinstance(args[1], Tree) or args[1].data != "list_expr":
                raise self.err(args[1], "checksum data must be a list '{ ... }'")
            items = args[1].children[0].children if args[1].children[0] is not None else []
            parts: list[tuple[str, int]] = []
            for it in items:
                v = self.expr(it, sc)
                if v.kind == "header":
                    for fname, fty in v.obj.type.fields:
                        parts.append((f"s[{v.obj.fields[fname]}]", width_of(fty) or 0))
                    continue
                w = width_of(v.type)
                if v.kind != "value" or w is None or v.type is BOOL:
                    raise self.err(it, f"checksum data item of type {v.type} is not supported (bit<N> fields)")
                parts.append((v.code, w))
            total = sum(w for _, w in parts)
            if total % 8:
                raise self.err(args[1], f"checksum data is {total} bits, not a whole number of bytes")
            ck = self.expr(args[2], sc)
            if ck.slot is None or not isinstance(ck.type, BitT) or ck.type.width != 16:
                raise self.err(args[2], "checksum field must be a bit<16> field")
            algo = self.expr(args[3], sc)
            hash_t = self.types.get("HashAlgorithm")
            if algo.type is not hash_t or algo.const != hash_t.members.get("csum16"):
                raise self.err(args[3], "only HashAlgorithm.csum16 is supported by softswitch")
            shift = total
            terms = []
            for code, w in parts:
                shift -= w
                terms.append(f"({code} << {shift})" if shift else code)
            data = f"({' | '.join(terms)}).to_bytes({total // 8}, 'big')" if terms else "b''"
            if name.endswith("with_payload"):
                data = f"{data} + pay"
            em(f"if {cond.code}:")
            with _Indent(em):
                if name.startswith("verify"):
                    em(f"if _csum16({data}) != s[{ck.slot}]:")
                    with _Indent(em):
                        em(f"s[{self.sm.members['checksum_error']}] = 1")
                else:
                    em(f"s[{ck.slot}] = _csum16({data})")
            return
        raise self.err(t, f"extern function '{name}' is not supported by softswitch")

    def action_call(self, callee: Val, args: list[Any], sc: Scope, t: Tree) -> None:
        info: _ActionInfo = self.action_info[id(callee.obj)]
        self.used_actions.add(id(info.adef))
        if len(args) != len(info.all_params):
            raise self.err(t, f"action {info.adef.name} takes {len(info.all_params)} arguments, got {len(args)}")
        pos: list[str] = []
        copy_out: list[tuple[Val, int, Any]] = []
        dirslots = {n: s for _, n, s in info.dir_params}
        for a, (direction, pname, pty) in zip(args, info.all_params, strict=True):
            v = self.expr(a, sc)
            if direction is None:
                pos.append(self.convert(v, pty, a).code)
                continue
            slot = dirslots[pname]
            if direction in ("in", "inout"):
                self.em(f"s[{slot}] = {self.convert(v, pty, a).code}")
            if direction in ("out", "inout"):
                copy_out.append((v, slot, a))
        self.em(f"{info.adef.func}(s{''.join(', ' + p for p in pos)})")
        for v, slot, a in copy_out:
            self.assign_to(v, Val(f"s[{slot}]", v.type), a)

    # ------------------------------------------------------------ parser

    def extract(self, arg: Tree, sc: Scope) -> None:
        em = self.em
        v = self.expr(arg, sc)
        if v.kind != "header":
            raise self.err(arg, "extract needs a header")
        h: HeaderInst = v.obj
        total = sum(width_of(ft) or 0 for _, ft in h.type.fields)
        nbytes = total // 8
        em(f"if o + {nbytes} > len(d):")
        with _Indent(em):
            em(f"s[{self.perr}] = {self.errors.index('PacketTooShort')}")
            em("return None, o")
        em(f"_v = int.from_bytes(d[o:o + {nbytes}], 'big')")
        em(f"o += {nbytes}")
        em(f"s[{h.valid}] = 1")
        shift = total
        for fname, fty in h.type.fields:
            w = width_of(fty) or 0
            shift -= w
            code = "_v" if shift == 0 else f"(_v >> {shift})"
            if shift + w < total:
                code = f"({code} & {_mask(w)})"
            em(f"s[{h.fields[fname]}] = {code}")

    def emit(self, v: Val, node: Tree) -> None:
        em = self.em
        if v.kind == "struct":
            for fname, _ in v.obj.type.fields:
                self.emit(self.inst_val(v.obj.members[fname], None, f"{v.path}.{fname}"), node)
            return
        if v.kind != "header":
            raise self.err(node, "emit needs a header or a struct of headers")
        h: HeaderInst = v.obj
        total = sum(width_of(ft) or 0 for _, ft in h.type.fields)
        shift = total
        terms = []
        for fname, fty in h.type.fields:
            w = width_of(fty) or 0
            shift -= w
            terms.append(f"(s[{h.fields[fname]}] << {shift})" if shift else f"s[{h.fields[fname]}]")
        em(f"if s[{h.valid}]:")
        with _Indent(em):
            em(f"out.append(({' | '.join(terms)}).to_bytes({total // 8}, 'big'))")

    def keyset_conds(self, ks: Tree, keys: list[Val], sc: Scope) -> list[str] | None:
        """Python conditions of one select case (None: default)."""
        items = ks.children if ks.data == "tuple_keyset" else [ks.children[0]]
        if len(items) == 1 and items[0].data == "default_keyset":
            return None
        if len(items) != len(keys):
            raise self.err(ks, f"select case has {len(items)} values for {len(keys)} keys")
        conds: list[str] = []
        for it, k in zip(items, keys, strict=True):
            if it.data in ("default_keyset", "dontcare_keyset"):
                continue
            if it.data == "range_keyset":
                raise self.err(it, "range keysets (a .. b) are not supported by softswitch")
            if it.data == "mask_keyset":
                val = self.convert(self.expr(it.children[0], sc), k.type, it)
                msk = self.convert(self.expr(it.children[1], sc), k.type, it)
                if val.const is None or msk.const is None:
                    raise self.err(it, "select masks must be constants")
                conds.append(f"({k.code} & {msk.const}) == {val.const & msk.const}")
                continue
            val = self.convert(self.expr(it.children[0], sc), k.type, it)
            if val.const is None:
                raise self.err(it, "select values must be constants")
            conds.append(f"{k.code} == {val.const!r}")
        return conds

    def parser(self, decl: Tree, bind: dict[str, Val]) -> str:
        em = self.em
        pname = str(decl.children[1])
        sc = Scope(self.globals)
        sc.names.update(bind)
        states: dict[str, Tree] = {}
        for ch in decl.children[3:]:
            if not isinstance(ch, Tree):
                continue
            if ch.data == "parser_state":
                n = str(ch.children[1])
                if n in states or n in ("accept", "reject"):
                    raise self.err(ch, f"state '{n}' declared twice or reserved")
                states[n] = ch
            elif ch.data == "const_decl":
                self.const_decl(ch, sc)
            elif ch.data == "value_set_decl":
                raise self.err(ch, "value_set is not supported by softswitch")
            elif ch.data == "instantiation":
                raise self.err(ch, "instantiations in a parser are not supported by softswitch")
            elif ch.data == "var_decl":
                raise self.err(ch, "parser-local variables are not supported by softswitch")
        if "start" not in states:
            raise self.err(decl, f"parser {pname} has no start state")
        fn = {n: f"p_{ident(pname)}_{n}" for n in states}
        ctx = _Ctx("parser")

        def target(tok: Any) -> str:
            n = str(tok)
            if n == "accept":
                return "None"
            if n == "reject":
                return "_REJECT"
            if n not in fn:
                raise self.err(tok, f"unknown parser state '{n}'")
            return fn[n]

        for n, st in states.items():
            em(f"def {fn[n]}(s, d, o):")
            with _Indent(em):
                for stmt in st.children[2:-1]:
                    if stmt.data in ("if_stmt", "switch_stmt"):
                        raise self.err(stmt, f"'{stmt.data.split('_')[0]}' in a parser state is not supported")
                    self.stmt(stmt, Scope(sc), ctx)
                tr = st.children[-1]
                if tr is None:
                    em("return _REJECT, o")
                elif tr.data == "transition_name":
                    em(f"return {target(tr.children[0])}, o")
                else:
                    keys = []
                    for k in tr.children[0].children:
                        kv = self.expr(k, sc)
                        if kv.kind != "value" or (width_of(kv.type) is None and kv.type is not BOOL):
                            raise self.err(k, f"select key of type {kv.type} is not supported")
                        tv = self.new_tmp()
                        em(f"{tv} = {kv.code}")
                        keys.append(Val(tv, kv.type))
                    has_default = False
                    for case in tr.children[1:]:
                        conds = self.keyset_conds(case.children[0], keys, sc)
                        nxt = target(case.children[1])
                        if conds is None or not conds:
                            em(f"return {nxt}, o")
                            has_default = True
                            break
                        em(f"if {' and '.join(conds)}:")
                        with _Indent(em):
                            em(f"return {nxt}, o")
                    if not has_default:
                        em(f"s[{self.perr}] = {self.errors.index('NoMatch')}")
                        em("return None, o")
            em("")
        return fn["start"]

    # ------------------------------------------------------------ controls

    def cp_name(self, control: str, local: str, anns: list[tuple[str, str, Tree]]) -> str:
        n = self.ann_string(anns, "name")
        if n is not None:
            return n[1:] if n.startswith(".") else (f"{control}.{n}" if control else n)
        return f"{control}.{local}" if control else local

    def action_decl(self, d: Tree, sc: Scope, control: str) -> None:
        anns = self.annotations(d.children[0])
        local = str(d.children[1])
        name = self.cp_name(control, local, anns)
        func = f"a_{ident(name)}"
        params: list[tuple[str, int]] = []
        all_params: list[tuple[str | None, str, Any]] = []
        dir_params: list[tuple[str, str, int]] = []
        asc = Scope(sc)
        pos_names: list[str] = []
        if d.children[2] is not None:
            for p in d.children[2].children:
                direction = str(p.children[1].children[0]) if p.children[1] is not None else None
                pty = self.resolve_type(p.children[2])
                pn = str(p.children[3])
                w = width_of(pty)
                if w is None or (pty is BOOL and direction is None):
                    raise self.err(p, f"action parameter '{pn}' of type {pty} is not supported (bit<N> only)")
                all_params.append((direction, pn, pty))
                if direction is None:
                    if dir_params:
                        pass
                    params.append((pn, w))
                    pos_names.append(f"p_{pn}")
                    asc.names[pn] = Val(f"p_{pn}", pty, path=pn)
                else:
                    slot = self.alloc(0)
                    dir_params.append((direction, pn, slot))
                    asc.names[pn] = Val(f"s[{slot}]", pty, slot=slot, path=pn)
        adef = ActionDef(name, func, params, self.ann_text(anns))
        self.actions.append(adef)
        self.action_info[id(adef)] = _ActionInfo(adef, dir_params, all_params)
        sc.names[local] = Val("", VOID, kind="action", obj=adef, path=local)
        em = self.em
        em(f"def {func}(s{''.join(', ' + n for n in pos_names)}):")
        with _Indent(em):
            self.block(d.children[3], asc, _Ctx("action", True, control))
        em("")

    def control(self, decl: Tree, role: str, bind: dict[str, Val]) -> str:
        em = self.em
        cname = str(decl.children[1])
        sc = Scope(self.globals)
        sc.names.update(bind)
        ctx = _Ctx(role, False, cname)
        for ch in decl.children[3:-1]:
            k = ch.data
            if k == "const_decl":
                self.const_decl(ch, sc)
            elif k == "var_decl":
                ty = self.resolve_type(ch.children[0])
                name = str(ch.children[1])
                if width_of(ty) is None:
                    raise self.err(ch, f"control-local variable '{name}' of type {ty} is not supported")
                slot = self.alloc(False if ty is BOOL else 0)
                init = self.convert(self.expr(ch.children[2], sc), ty, ch) if ch.children[2] is not None else None
                if init is not None:
                    if init.const is None:
                        raise self.err(ch, "control-local initialisers must be constant")
                    self.slots[slot] = init.const
                sc.names[name] = Val(f"s[{slot}]", ty, slot=slot, path=name)
            elif k == "instantiation":
                self.control_instance(ch, sc, cname)
            elif k == "action_decl":
                self.action_decl(ch, sc, cname)
            elif k == "table_decl":
                self.table_decl(ch, sc, cname)
            else:
                raise self.err(ch, f"'{k}' in a control is not supported")
        fn = f"c_{ident(cname)}"
        em(f"def {fn}(s, pay):")
        with _Indent(em):
            if role == "deparser":
                em("out = []")
            self.block(decl.children[-1], sc, ctx)
            if role == "deparser":
                em("return out")
        em("")
        return fn

    def control_instance(self, d: Tree, sc: Scope, control: str) -> None:
        anns = self.annotations(d.children[0])
        tnode = d.children[1]
        tname = str(tnode.children[0]) if tnode.data in ("named_type", "specialized_type") else tnode.data
        local = str(d.children[3])
        args = list(d.children[2].children) if d.children[2] is not None else []
        name = self.cp_name(control, local, anns)
        units = {"packets": "PACKETS", "bytes": "BYTES", "packets_and_bytes": "BOTH"}
        ct = self.types.get("CounterType")

        def unit_of(node: Tree) -> str:
            v = self.expr(node, sc)
            if v.type is not ct or v.const is None:
                raise self.err(node, "counter type must be CounterType.packets/bytes/packets_and_bytes")
            return units[next(k for k, c in ct.members.items() if c == v.const)]

        if tname == "counter":
            if len(args) != 2:
                raise self.err(d, "counter(size, CounterType) takes two arguments")
            size = self.expr(args[0], sc)
            if size.const is None:
                raise self.err(args[0], "counter size must be a constant")
            cdef = CounterDef(name, int(size.const), unit_of(args[1]), self.ann_text(anns))
            self.counters.append(cdef)
            var = f"_C_{ident(name)}"
            sc.names[local] = Val("", VOID, kind="counter", obj=(cdef, var), path=local)
        elif tname == "direct_counter":
            if len(args) != 1:
                raise self.err(d, "direct_counter(CounterType) takes one argument")
            dc = DirectCounterDef(name, unit_of(args[0]), "", self.ann_text(anns))
            self.direct_counters.append(dc)
            sc.names[local] = Val("", VOID, kind="dcounter", obj=dc, path=local)
        elif tname in UNSUPPORTED_EXTERNS:
            raise self.err(d, f"extern '{tname}' is not supported by softswitch")
        elif tname in self.controls or tname in self.parsers:
            raise self.err(d, f"instantiating '{tname}' inside a control is not supported by softswitch")
        else:
            raise self.err(d, f"instantiation of '{tname}' is not supported by softswitch")

    def table_decl(self, d: Tree, sc: Scope, control: str) -> None:
        anns = self.annotations(d.children[0])
        local = str(d.children[1])
        name = self.cp_name(control, local, anns)
        keys: list[KeyDef] = []
        key_vals: list[Val] = []
        arefs: list[ActionRefDef] = []
        default: tuple[ActionDef, list[int]] | None = None
        const_default = False
        size = 1024
        support_timeout = False
        dcounter: DirectCounterDef | None = None
        entries_trees: list[Tree] = []
        entries_const = False
        has_entries = False
        seen: set[str] = set()
        for p in d.children[2:]:
            pd = p.data
            pname = {"key_prop": "key", "actions_prop": "actions", "default_prop": "default_action",
                     "entries_prop": "entries"}.get(pd) or str(p.children[1])
            if pname in seen:
                raise self.err(p, f"table {name}: property '{pname}' given twice")
            seen.add(pname)
            if pd == "key_prop":
                for ke in p.children:
                    v = self.expr(ke.children[0], sc)
                    mk = str(ke.children[1])
                    if mk not in self.match_kinds:
                        raise self.err(ke.children[1], f"unknown match kind '{mk}'")
                    if mk not in ("exact", "ternary", "lpm"):
                        raise self.err(ke.children[1], f"match kind '{mk}' is not supported by softswitch")
                    w = width_of(v.type)
                    if v.kind != "value" or w is None:
                        raise self.err(ke, f"table key of type {v.type} is not supported")
                    kanns = self.annotations(ke.children[2])
                    kname = self.ann_string(kanns, "name") or v.path or self.text(ke.children[0])
                    keys.append(KeyDef(kname, mk, w))
                    key_vals.append(v if v.type is not BOOL else Val(f"(1 if {v.code} else 0)", BitT(1)))
            elif pd == "actions_prop":
                for ar in p.children:
                    aanns = self.annotations(ar.children[0])
                    an = str(ar.children[1])
                    av = sc.get(an)
                    if av is None or av.kind != "action":
                        raise self.err(ar, f"table {name}: '{an}' is not an action")
                    if ar.children[2] is not None and ar.children[2].children:
                        raise self.err(ar, "actions with bound arguments in an action list are not supported")
                    scope = "TABLE_AND_DEFAULT"
                    names = [n for n, _, _ in aanns]
                    if "defaultonly" in names:
                        scope = "DEFAULT_ONLY"
                    elif "tableonly" in names:
                        scope = "TABLE_ONLY"
                    info = self.action_info[id(av.obj)]
                    if info.dir_params:
                        raise self.err(ar, f"action {an} with directional parameters cannot be in a table")
                    arefs.append(ActionRefDef(av.obj, self.ann_text(aanns), scope))
            elif pd == "default_prop":
                const_default = p.children[1] is not None
                default = self.action_value(p.children[2], sc, arefs, name)
            elif pd == "entries_prop":
                entries_const = p.children[1] is not None
                has_entries = True
                entries_trees = list(p.children[2:])
            else:
                val = p.children[2]
                if pname == "size":
                    v = self.expr(val, sc)
                    if v.const is None or isinstance(v.const, bool):
                        raise self.err(val, "size must be a constant")
                    size = int(v.const)
                elif pname == "support_timeout":
                    v = self.expr(val, sc)
                    if v.type is not BOOL or v.const is None:
                        raise self.err(val, "support_timeout must be true or false")
                    support_timeout = bool(v.const)
                elif pname == "counters":
                    v = self.expr(val, sc)
                    if v.kind != "dcounter":
                        raise self.err(val, "counters must name a direct_counter")
                    dcounter = v.obj
                    if dcounter.table:
                        raise self.err(val, f"direct counter {dcounter.name} is used by two tables")
                    dcounter.table = name
                else:
                    raise self.err(p, f"table property '{pname}' is not supported by softswitch")
        if has_entries and not entries_const:
            raise self.err(d, f"table {name}: non-const 'entries' are not supported (use const entries)")
        if default is None:
            noa = self.globals.get("NoAction")
            if noa is None:
                raise self.err(d, f"table {name} has no default_action")
            default = (noa.obj, [])
        for ar in arefs:
            self.used_actions.add(id(ar.action))
        self.used_actions.add(id(default[0]))
        tvar = f"_T_{ident(name)}"
        func = f"t_{ident(name)}"
        tdef = TableDef(name, func, keys, arefs, default[0], default[1], const_default, size, support_timeout,
                        dcounter, [], entries_const, self.ann_text(anns))
        ternary = any(k.match_kind == "ternary" for k in keys)
        lpm = [i for i, k in enumerate(keys) if k.match_kind == "lpm"]
        if len(lpm) > 1:
            raise self.err(d, f"table {name}: more than one lpm key")
        for i, et in enumerate(entries_trees):
            ks = et.children[1]
            items = ks.children if ks.data == "tuple_keyset" else [ks.children[0]]
            if len(items) != len(keys):
                raise self.err(et, f"entry has {len(items)} key values for {len(keys)} keys")
            match: list[tuple[int, int | None, int | None]] = []
            for it, k, kv in zip(items, keys, key_vals, strict=True):
                if it.data in ("default_keyset", "dontcare_keyset"):
                    if k.match_kind == "exact":
                        raise self.err(it, "wildcard for an exact key")
                    match.append((0, 0, None) if k.match_kind == "ternary" else (0, None, 0))
                    continue
                if it.data == "range_keyset":
                    raise self.err(it, "range keysets are not supported by softswitch")
                val = self.convert(self.expr(it.children[0], sc), kv.type, it)
                if val.const is None:
                    raise self.err(it, "entry keys must be constants")
                mask = _mask(k.width)
                if it.data == "mask_keyset":
                    m = self.convert(self.expr(it.children[1], sc), kv.type, it)
                    if m.const is None:
                        raise self.err(it, "entry masks must be constants")
                    mask = int(m.const)
                    if k.match_kind == "exact":
                        raise self.err(it, "mask for an exact key")
                if k.match_kind == "exact":
                    match.append((int(val.const), None, None))
                elif k.match_kind == "ternary":
                    match.append((int(val.const) & mask, mask, None))
                else:
                    plen = bin(mask).count("1")
                    if mask != (_mask(plen) << (k.width - plen)):
                        raise self.err(it, "lpm mask is not a prefix")
                    match.append((int(val.const) & mask, None, plen))
            adef, args = self.action_value(et.children[2], sc, arefs, name)
            ar = next(a for a in arefs if a.action is adef)
            if ar.scope == "DEFAULT_ONLY":
                raise self.err(et, f"entry uses default-only action {adef.name}")
            prio = len(entries_trees) - i if ternary or (False) else 0
            tdef.const_entries.append(ConstEntry(match, adef, args, prio))
        self.tables.append(tdef)
        sc.names[local] = Val("", VOID, kind="table", obj=tdef, path=local)
        # The apply function: look the key up, run the action, count; returns (hit, action function name).
        em = self.em
        key = "(" + ", ".join(v.code for v in key_vals) + ("," if len(key_vals) == 1 else "") + ")"
        em(f"def {func}(s):")
        with _Indent(em):
            if keys and all(k.match_kind == "exact" for k in keys):
                em(f"r = {tvar}.exact.get({key})")
            elif keys:
                em(f"r = {tvar}.lookup({key})")
            else:
                em("r = None")
            em("if r is None:")
            with _Indent(em):
                em(f"r = {tvar}.default")
                em("r[0](s, *r[1])")
                em("return False, r[3]")
            em("e = r[2]")
            if dcounter is not None:
                em("e.packets += 1")
                em(f"e.bytes += s[{self.inlen}]")
            em("e.last_hit_ns = _now()")
            em("r[0](s, *r[1])")
            em("return True, r[3]")
        em("")

    def action_value(self, t: Tree, sc: Scope, arefs: list[ActionRefDef], table: str) -> tuple[ActionDef, list[int]]:
        """An action call with constant arguments: default_action and const entries."""
        if t.data == "call":
            callee = self.expr(t.children[0], sc)
            args = self.arg_list(t)
        else:
            callee = self.expr(t, sc)
            args = []
        if callee.kind != "action":
            raise self.err(t, f"table {table}: expected an action call")
        adef: ActionDef = callee.obj
        if not any(a.action is adef for a in arefs):
            raise self.err(t, f"table {table}: action {adef.name} is not in its actions list")
        if len(args) != len(adef.params):
            raise self.err(t, f"action {adef.name} takes {len(adef.params)} arguments, got {len(args)}")
        vals: list[int] = []
        for a, (pn, w) in zip(args, adef.params, strict=True):
            v = self.convert(self.expr(a, sc), BitT(w), a)
            if v.const is None:
                raise self.err(a, f"argument '{pn}' must be a constant")
            vals.append(int(v.const))
        return adef, vals

    # ------------------------------------------------------------ the whole program

    def compile(self, tree: Tree) -> ProgramModel:
        self.declare(tree)
        if self.main is None:
            raise self.src.error(len(self.src.origins), 1, "no 'V1Switch(...) main;' package instantiation")
        main = self.main
        margs = list(main.children[2].children) if main.children[2] is not None else []
        if len(margs) != 6:
            raise self.err(main, "V1Switch takes six blocks: parser, verify checksum, ingress, egress, compute "
                           "checksum, deparser")
        roles = ["parser", "verify", "ingress", "egress", "compute", "deparser"]
        blocks: list[tuple[str, Tree]] = []
        for a, role in zip(margs, roles, strict=True):
            if not isinstance(a, Tree) or a.data != "call" or a.children[0].data != "name" or (
                    a.children[1] is not None and a.children[1].children):
                raise self.err(a, f"V1Switch {role}: expected 'name()'")
            n = str(a.children[0].children[0])
            decl = self.parsers.get(n) if role == "parser" else self.controls.get(n)
            if decl is None:
                raise self.err(a, f"V1Switch {role}: no {'parser' if role == 'parser' else 'control'} named '{n}'")
            blocks.append((role, decl))
        for n, c in self.controls.items():
            if all(c is not b for _, b in blocks):
                raise self.err(c, f"control '{n}' is not used by V1Switch (nested controls are not supported)")
        # The per-packet state: the headers, the metadata and standard_metadata, shared by all six blocks.
        pdecl = blocks[0][1]
        pparams = pdecl.children[2].children if pdecl.children[2] is not None else []
        if len(pparams) != 4:
            raise self.err(pdecl, "the v1model parser takes (packet_in, out H, inout M, inout standard_metadata_t)")
        h_t = self.resolve_type(pparams[1].children[2])
        m_t = self.resolve_type(pparams[2].children[2])
        sm_t = self.types.get("standard_metadata_t")
        if not isinstance(h_t, StructT) or not isinstance(m_t, StructT):
            raise self.err(pdecl, "the parser's headers and metadata must be structs")
        self.inlen = self.alloc(0)
        self.trunc = self.alloc(0)  # truncate(): the frame's length limit when it leaves, 0 for none
        hdr = self.instantiate(h_t, "hdr")
        meta = self.instantiate(m_t, "meta")
        self.sm = self.instantiate(sm_t, "standard_metadata")
        self.perr = self.sm.members["parser_error"]
        expected: dict[str, list[Any]] = {
            "parser": [PACKET_IN, h_t, m_t, sm_t], "verify": [h_t, m_t], "ingress": [h_t, m_t, sm_t],
            "egress": [h_t, m_t, sm_t], "compute": [h_t, m_t], "deparser": [PACKET_OUT, h_t],
        }
        insts = {id(h_t): hdr, id(m_t): meta, id(sm_t): self.sm}
        em = self.em
        em("# generated by softswitch from the P4 program; do not edit")
        em("")
        funcs: dict[str, str] = {}
        # Global actions (NoAction) were emitted during declare(); emit them into the module now.
        pre = list(em.lines)
        em.lines = []
        for role, decl in blocks:
            params = decl.children[2].children if decl.children[2] is not None else []
            exp = expected[role]
            if len(params) != len(exp):
                raise self.err(decl, f"{role} block '{decl.children[1]}' has {len(params)} parameters, v1model "
                               f"expects {len(exp)}")
            bind: dict[str, Val] = {}
            for p, et in zip(params, exp, strict=True):
                pt = self.resolve_type(p.children[2])
                pn = str(p.children[3])
                if pt is not et:
                    raise self.err(p, f"parameter '{pn}' has type {pt}, v1model expects {et}")
                if pt is PACKET_IN:
                    bind[pn] = Val("", pt, kind="packet", obj="in", path=pn)
                elif pt is PACKET_OUT:
                    bind[pn] = Val("", pt, kind="packet", obj="out", path=pn)
                else:
                    bind[pn] = self.inst_val(insts[id(pt)], pt, pn)
            if role == "parser":
                funcs[role] = self.parser(decl, bind)
            else:
                funcs[role] = self.control(decl, role, bind)
        em.lines = pre + em.lines
        em("PIPELINE = (" + ", ".join(funcs[r] for r in roles) + ")")
        used = [a for a in self.actions if id(a) in self.used_actions]
        # Actions without a control (NoAction) come first, as in p4c's P4Info.
        used.sort(key=lambda a: 0 if "." not in a.name else 1)
        for dc in self.direct_counters:
            if not dc.table:
                raise self.src.error(main.meta.line, 1, f"direct_counter {dc.name} is not attached to a table")
        return ProgramModel(
            tables=self.tables, actions=used, counters=self.counters, direct_counters=self.direct_counters,
            controller_headers=self.controller_headers, ser_enums=self.ser_enums, code="\n".join(em.lines) + "\n",
            init=list(self.slots), special=self.special_slots(),
        )

    # slots the pipeline driver needs
    inlen: int = 0
    trunc: int = 0
    perr: int = 0
    sm: Any = None

    def special_slots(self) -> dict[str, int]:
        m = self.sm.members
        return {"inlen": self.inlen, "truncate": self.trunc, "ingress_port": m["ingress_port"],
                "packet_length": m["packet_length"],
                "egress_spec": m["egress_spec"], "egress_port": m["egress_port"], "mcast_grp": m["mcast_grp"],
                "parser_error": m["parser_error"], "checksum_error": m["checksum_error"]}
