"""The router config's NAT as an nftables ruleset in the router namespace (or the user's own ruleset).

One ``table inet offloadgen``: a forward chain whose ``ct state`` rule turns conntrack on for both
families even without NAT (conntrack is only active in a namespace once a rule uses it), a prerouting chain
with the DNAT rules and a postrouting chain with masquerade/SNAT, in the config's order (the first match
wins, as in :mod:`runtime.nat`). Loaded with ``nft -f`` from a file; nft's own message is quoted on error.

The ``[flowtable]`` policy's statements (``set = { dscp = ... }``, ``counter = ...``) become a
``statements`` chain the forward chain jumps to, so the kernel marks and counts what it forwards as the
switch does what it forwards. The policy's rules look at a connection's original direction, whichever
direction the packet goes: the nft rules match the conntrack entry's original tuple (``ct original ip saddr``,
``ct original proto-dst``) and, for ``iif``/``oif``, the packet's interfaces per ``ct direction`` (a reply
comes in where the original leaves). The first matching policy rule decides, also one without statements:
every rule up to the last one with statements ends in ``return``. Named counters are nft counter objects.

There is no ``flowtable`` and no ``flow add @ft``: this kernel has no nf_flow_table, and the offload
policy is offloadgen's ``[flowtable]`` section applied to the kernel's connections.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from ..actions import Count, SetDscp, SetVlan, dscp_name
from ..config import PortRange, RouterConfig
from ..errors import ConfigError
from ..flowtable.policy import FlowtableConfig, PolicyRule
from .netns import KernelError, NetNs

TABLE = "offloadgen"
STATEMENTS_CHAIN = "statements"
_L4 = {6: "tcp", 17: "udp"}


def _ports(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _one_or_set(items: list[str]) -> str:
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


def _dscp(value: int) -> str:
    """nft's name where nft has one that is not also a keyword of its grammar (``le``), else the number."""
    name = dscp_name(value)
    return name if name.startswith(("cs", "af")) or name == "ef" else str(value)


def check_statements(config: RouterConfig, policy: FlowtableConfig, *, user_ruleset: str | None) -> None:
    """Refuse what the kernel slow path cannot apply alike on both paths (see the README).

    VLAN retag: the kernel's frames are untagged (the TAPs carry no 802.1Q, and the switch tags a VLAN
    port's packet-outs with the port's id); retagging them would be the controller rewriting the kernel's
    output behind nft's back, not the kernel applying the policy. With the user's own ruleset offloadgen does
    not write the forward chain, so it cannot make the kernel mark or count as the policy says."""
    for i, rule in enumerate(policy.rules):
        if not rule.statements:
            continue
        where = f"{config.source}: flowtable.rules[{i}]"
        if any(isinstance(st, SetVlan) for st in rule.statements):
            raise ConfigError(f"{where}: set.vlan (VLAN retag) is not available with --slowpath kernel: the kernel "
                              "forwards untagged frames and has no 802.1Q here; remove set.vlan from the rule or use "
                              "--slowpath offloadgen")
        if user_ruleset is not None:
            what = " ".join(str(st) for st in rule.statements)
            raise ConfigError(f"{where}: the statements ({what}) cannot be applied with --nft-ruleset {user_ruleset}: "
                              "offloadgen does not rewrite your ruleset. Put them in the ruleset (ip dscp set, "
                              "counter name) and remove set/counter from the rule, or drop --nft-ruleset to have "
                              "offloadgen generate them")


def statement_rules(config: RouterConfig, policy: FlowtableConfig) -> list[str]:
    """The ``statements`` chain's rules: one per family, protocol, direction (when the rule names ports) and
    port range of each policy rule, in the policy's order, up to the last rule with statements."""
    last = max((i for i, r in enumerate(policy.rules) if r.statements), default=-1)
    name = {p.port: p.name for p in config.ports.values()}
    out: list[str] = []
    for rule in policy.rules[:last + 1]:
        out += _rule_lines(rule, name)
    return out


def _rule_lines(rule: PolicyRule, name: dict[int, str]) -> list[str]:
    fams = {4, 6}
    for nets in (rule.src, rule.dst):
        if nets is not None:
            fams &= {n.version for n in nets}
    ported = rule.sport is not None or rule.dport is not None
    # one protocol per rule: with two, nft cannot type a port match (it would compare the wrong byte order)
    protos: list[int | None] = (list(sorted(rule.protos)) if rule.protos is not None
                                else [6, 17] if ported else [None])
    ifs = rule.iif is not None or rule.oif is not None
    dirs: list[tuple[str | None, frozenset[int] | None, frozenset[int] | None]] = (
        [("original", rule.iif, rule.oif), ("reply", rule.oif, rule.iif)] if ifs else [(None, None, None)])
    sports: list[PortRange | None] = list(rule.sport) if rule.sport is not None else [None]
    dports: list[PortRange | None] = list(rule.dport) if rule.dport is not None else [None]
    out = []
    for fam in sorted(fams):
        l3 = "ip" if fam == 4 else "ip6"
        acts = []
        for st in rule.statements:
            if isinstance(st, SetDscp):
                acts.append(f"{l3} dscp set {_dscp(st.dscp)}")
            elif isinstance(st, Count):
                acts.append(f'counter name "{st.name}"')
        acts.append("return")
        for proto in protos:
            for d, iif, oif in dirs:
                for sp in sports:
                    for dp in dports:
                        m = [f"meta nfproto ipv{fam}"]
                        if proto is not None:
                            m.append(f"meta l4proto {_L4[proto]}")
                        if d is not None:
                            m.append(f"ct direction {d}")
                        if iif is not None:
                            m.append("iifname " + _one_or_set([f'"{name[p]}"' for p in sorted(iif)]))
                        if oif is not None:
                            m.append("oifname " + _one_or_set([f'"{name[p]}"' for p in sorted(oif)]))
                        for key, nets in (("saddr", rule.src), ("daddr", rule.dst)):
                            if nets is not None:
                                m.append(f"ct original {l3} {key} "
                                         + _one_or_set([str(n) for n in nets if n.version == fam]))
                        if sp is not None:
                            m.append(f"ct original proto-src {_ports(sp.lo, sp.hi)}")
                        if dp is not None:
                            m.append(f"ct original proto-dst {_ports(dp.lo, dp.hi)}")
                        out.append(" ".join(m + acts))
    return out


def render_ruleset(config: RouterConfig, policy: FlowtableConfig | None = None) -> str:
    """The ruleset text for ``config`` (without any ``flush ruleset``: only our table is replaced), with
    ``policy``'s statements when given."""
    name = {p.port: p.name for p in config.ports.values()}
    pre: list[str] = []
    for r in config.dnat:
        fam = "ip" if r.to.version == 4 else "ip6"
        proto = {6: "tcp", 17: "udp"}[r.proto]
        m = [f'iifname "{name[r.in_port]}"'] if r.in_port is not None else []
        m.append(f"{fam} daddr {r.dst}" if r.dst is not None else f"meta nfproto {'ipv4' if fam == 'ip' else 'ipv6'} "
                 "fib daddr type local")
        m.append(f"{proto} dport {_ports(r.dport.lo, r.dport.hi)}")
        to = str(r.to) if fam == "ip" else f"[{r.to}]"
        if r.to_port is not None:
            to += ":" + _ports(r.to_port, r.to_port + (r.dport.hi - r.dport.lo))
        pre.append(" ".join(m) + f" dnat {fam} to {to}")
    post: list[str] = []
    for s in config.snat:
        out = f'oifname "{name[s.out_port]}"'
        fams = [4, 6] if s.to is None else [s.to.version]
        for v in fams:
            fam = "ip" if v == 4 else "ip6"
            m = [out]
            if s.src is not None:
                nets = [str(n) for n in s.src if n.version == v]
                if not nets:
                    continue
                m.append(f"{fam} saddr {{ {', '.join(nets)} }}")
            else:
                m.append(f"meta nfproto {'ipv4' if v == 4 else 'ipv6'}")
            what = "masquerade" if s.to is None else f"snat {fam} to {s.to if v == 4 else f'[{s.to}]'}"
            if s.ports is not None:
                rng = _ports(s.ports.lo, s.ports.hi)
                ported = f"{what} to :{rng}" if s.to is None else f"{what}:{rng}"
                post.append(" ".join([*m, "meta l4proto { tcp, udp }", ported]))
            post.append(" ".join([*m, what]))
    stmts = statement_rules(config, policy) if policy is not None else []
    counters = policy.counter_names if policy is not None else ()
    lines = [f"table inet {TABLE} {{",
             *(f"\tcounter {n} {{ }}" for n in counters),
             "\tchain forward {",
             "\t\ttype filter hook forward priority filter; policy accept;",
             "\t\tct state new counter",
             *([f"\t\tjump {STATEMENTS_CHAIN}"] if stmts else []),
             "\t}",
             *([f"\tchain {STATEMENTS_CHAIN} {{", *(f"\t\t{r}" for r in stmts), "\t}"] if stmts else []),
             "\tchain prerouting {",
             "\t\ttype nat hook prerouting priority dstnat; policy accept;",
             *(f"\t\t{r}" for r in pre),
             "\t}",
             "\tchain postrouting {",
             "\t\ttype nat hook postrouting priority srcnat; policy accept;",
             *(f"\t\t{r}" for r in post),
             "\t}",
             "}"]
    return "\n".join(lines) + "\n"


def _nft_file(ns: NetNs, path: Path, what: str) -> None:
    r = ns.run(["nft", "-f", str(path)], check=False)
    if r.returncode != 0:
        raise KernelError(f"{what}: nft rejected it:\n{(r.stderr or r.stdout).strip()}")


def load_ruleset(ns: NetNs, config: RouterConfig, user_file: str | None = None,
                 policy: FlowtableConfig | None = None) -> str:
    """Replace our table in ``ns`` with the config's ruleset (and ``policy``'s statements), or load
    ``user_file`` instead; returns the text loaded."""
    if shutil.which("nft") is None:
        raise KernelError("the kernel slow path needs nft (apt-get install nftables)")
    ns.run(["nft", "delete", "table", "inet", TABLE], check=False)
    if user_file is not None:
        p = Path(user_file)
        try:
            text = p.read_text()
        except OSError as exc:
            raise KernelError(f"{p}: cannot read the nftables ruleset: {exc.strerror}") from None
        _nft_file(ns, p.resolve(), f"{p}")
        return text
    text = render_ruleset(config, policy)
    with tempfile.NamedTemporaryFile("w", suffix=".nft", prefix="offloadgen-") as f:
        f.write(text)
        f.flush()
        _nft_file(ns, Path(f.name), f"{config.source}: the ruleset made from [nat] and [flowtable]")
    return text


def read_counters(ns: NetNs) -> dict[str, tuple[int, int]]:
    """Our table's named counters (packets, bytes) as the kernel has them now."""
    r = ns.run(["nft", "-j", "list", "counters", "table", "inet", TABLE], check=False)
    if r.returncode != 0:
        raise KernelError(f"reading the nft counters of table inet {TABLE}: {(r.stderr or r.stdout).strip()}")
    try:
        items = json.loads(r.stdout)["nftables"]
    except (ValueError, KeyError, TypeError) as exc:
        raise KernelError(f"nft -j list counters: unexpected output ({exc})") from None
    return {c["name"]: (int(c["packets"]), int(c["bytes"])) for item in items if (c := item.get("counter"))}
