"""The router config's NAT as an nftables ruleset in the router namespace (or the user's own ruleset).

One ``table inet offloadgen``: a forward chain whose ``ct state`` rule turns conntrack on for both
families even without NAT (conntrack is only active in a namespace once a rule uses it), a prerouting chain
with the DNAT rules and a postrouting chain with masquerade/SNAT, in the config's order (the first match
wins, as in :mod:`runtime.nat`). Loaded with ``nft -f`` from a file; nft's own message is quoted on error.

There is no ``flowtable`` and no ``flow add @ft``: this kernel has no nf_flow_table, and the offload
policy is offloadgen's ``[flowtable]`` section applied to the kernel's connections.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ..config import RouterConfig
from .netns import KernelError, NetNs

TABLE = "offloadgen"


def _ports(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}-{hi}"


def render_ruleset(config: RouterConfig) -> str:
    """The ruleset text for ``config`` (without any ``flush ruleset``: only our table is replaced)."""
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
    lines = [f"table inet {TABLE} {{",
             "\tchain forward {",
             "\t\ttype filter hook forward priority filter; policy accept;",
             "\t\tct state new counter",
             "\t}",
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


def load_ruleset(ns: NetNs, config: RouterConfig, user_file: str | None = None) -> str:
    """Replace our table in ``ns`` with the config's ruleset, or load ``user_file`` instead; returns the
    text loaded."""
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
    text = render_ruleset(config)
    with tempfile.NamedTemporaryFile("w", suffix=".nft", prefix="offloadgen-") as f:
        f.write(text)
        f.flush()
        _nft_file(ns, Path(f.name), f"{config.source}: the ruleset made from [nat]")
    return text
