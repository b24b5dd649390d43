"""The kernel's conntrack over ctnetlink (``net/netfilter/nf_conntrack_netlink.c``): events, a dump for
reconciliation, and the two changes a flow-offload driver makes to an offloaded connection.

- Events: NEW, UPDATE (state and status changes: TCP SYN_RECV/ESTABLISHED, UDP seen both ways, ASSURED)
  and DESTROY, each with both tuples -- the reply tuple carries the NAT.
- :meth:`CtNetlink.set_timeout`: the kernel's flowtable keeps an offloaded connection alive itself
  (``nf_flow_table_extend_ct_timeout``); here the switch forwards its packets, so the controller extends
  the timeout from the switch's counters. The request names the full original tuple (an update by a
  partial filter is refused with EOPNOTSUPP).
- :meth:`CtNetlink.set_liberal`: ``flow_offload_fixup_tcp`` sets ``IP_CT_TCP_FLAG_BE_LIBERAL`` on both
  directions, because the window tracking has not seen the packets the switch forwarded; a FIN or a
  mid-stream packet that comes back to the kernel would otherwise be INVALID.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink import NETLINK_NETFILTER
from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg

from ..conntrack import IPPROTO_ICMP, IPPROTO_ICMPV6, CtTuple, TcpState
from .nl import NetlinkError, NlRequester, open_netlink, split

log = logging.getLogger(__name__)

NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_DELETE = 2
NFNLGRP_CONNTRACK_NEW = 1
NFNLGRP_CONNTRACK_UPDATE = 2
NFNLGRP_CONNTRACK_DESTROY = 3
NLM_F_CREATE = 0x400
IP_CT_TCP_FLAG_BE_LIBERAL = 0x08

# IPS_* bits (include/uapi/linux/netfilter/nf_conntrack_common.h)
IPS_SEEN_REPLY = 1 << 1
IPS_ASSURED = 1 << 2
IPS_SRC_NAT = 1 << 4
IPS_DST_NAT = 1 << 5
IPS_DYING = 1 << 9
IPS_OFFLOAD = 1 << 14
IPS_HW_OFFLOAD = 1 << 15


class KEvent(enum.Enum):
    NEW = "NEW"
    UPDATE = "UPDATE"
    DESTROY = "DESTROY"


@dataclass(frozen=True, slots=True)
class KCt:
    """One kernel conntrack entry as ctnetlink reports it."""

    id: int
    orig: CtTuple
    reply: CtTuple
    status: int
    timeout_s: int
    tcp_state: TcpState | None
    packets: tuple[int, int] = (0, 0)
    bytes: tuple[int, int] = (0, 0)
    liberal: bool = False

    @property
    def proto(self) -> int:
        return self.orig.proto

    @property
    def seen_reply(self) -> bool:
        return bool(self.status & IPS_SEEN_REPLY)

    def state_name(self) -> str:
        if self.tcp_state is not None:
            return self.tcp_state.name
        if self.status & IPS_ASSURED:
            return "ASSURED"
        return "REPLIED" if self.seen_reply else "UNREPLIED"


def _tuple(attr: Any) -> CtTuple:
    ip = attr.get_attr("CTA_TUPLE_IP")
    pr = attr.get_attr("CTA_TUPLE_PROTO")
    src = ip.get_attr("CTA_IP_V4_SRC") or ip.get_attr("CTA_IP_V6_SRC")
    dst = ip.get_attr("CTA_IP_V4_DST") or ip.get_attr("CTA_IP_V6_DST")
    proto = pr.get_attr("CTA_PROTO_NUM")
    if proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        ident = pr.get_attr("CTA_PROTO_ICMP_ID") or pr.get_attr("CTA_PROTO_ICMPV6_ID") or 0
        sport = dport = ident
    else:
        sport = pr.get_attr("CTA_PROTO_SRC_PORT") or 0
        dport = pr.get_attr("CTA_PROTO_DST_PORT") or 0
    return CtTuple(ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed, proto, sport, dport)


def decode(m: nfct_msg) -> KCt | None:
    o, r = m.get_attr("CTA_TUPLE_ORIG"), m.get_attr("CTA_TUPLE_REPLY")
    if o is None or r is None:
        return None
    tcp_state = None
    liberal = False
    pi = m.get_attr("CTA_PROTOINFO")
    if pi is not None:
        tcp = pi.get_attr("CTA_PROTOINFO_TCP")
        if tcp is not None:
            st = tcp.get_attr("CTA_PROTOINFO_TCP_STATE")
            if st is not None:
                tcp_state = TcpState(st) if st < len(TcpState) else TcpState.NONE
            fo = tcp.get_attr("CTA_PROTOINFO_TCP_FLAGS_ORIGINAL")
            fr = tcp.get_attr("CTA_PROTOINFO_TCP_FLAGS_REPLY")
            liberal = bool(fo and fr and fo[0] & fr[0] & IP_CT_TCP_FLAG_BE_LIBERAL)  # (flags, mask) each
    counters = []
    for key in ("CTA_COUNTERS_ORIG", "CTA_COUNTERS_REPLY"):
        c = m.get_attr(key)
        counters.append((c.get_attr("CTA_COUNTERS_PACKETS") or 0, c.get_attr("CTA_COUNTERS_BYTES") or 0)
                        if c is not None else (0, 0))
    try:
        orig, reply = _tuple(o), _tuple(r)
    except (TypeError, ValueError):
        return None
    return KCt(m.get_attr("CTA_ID") or 0, orig, reply, m.get_attr("CTA_STATUS") or 0,
               m.get_attr("CTA_TIMEOUT") or 0, tcp_state, (counters[0][0], counters[1][0]),
               (counters[0][1], counters[1][1]), liberal)


def _tuple_attrs(t: CtTuple) -> dict[str, object]:
    v = "V4" if t.family == 4 else "V6"
    proto: list[list[object]] = [["CTA_PROTO_NUM", t.proto]]
    if t.proto in (IPPROTO_ICMP, IPPROTO_ICMPV6):
        k = "CTA_PROTO_ICMP" if t.proto == IPPROTO_ICMP else "CTA_PROTO_ICMPV6"
        proto += [[f"{k}_ID", t.sport], [f"{k}_TYPE", 8 if t.proto == IPPROTO_ICMP else 128], [f"{k}_CODE", 0]]
    else:
        proto += [["CTA_PROTO_SRC_PORT", t.sport], ["CTA_PROTO_DST_PORT", t.dport]]
    return {"attrs": [["CTA_TUPLE_IP", {"attrs": [[f"CTA_IP_{v}_SRC", str(ipaddress.ip_address(t.src))],
                                                  [f"CTA_IP_{v}_DST", str(ipaddress.ip_address(t.dst))]]}],
                      ["CTA_TUPLE_PROTO", {"attrs": proto}]]}


def _msg(family: int, attrs: list[list[object]]) -> nfct_msg:
    m = nfct_msg()
    m["nfgen_family"] = socket.AF_INET if family == 4 else socket.AF_INET6
    m["version"] = 0
    m["res_id"] = 0
    m["attrs"] = attrs
    return m


class CtNetlink:
    """ctnetlink in the router namespace: an event socket (read by the caller's selector) and a request
    socket for dumps and changes."""

    def __init__(self, netns: str) -> None:
        groups = (1 << (NFNLGRP_CONNTRACK_NEW - 1)) | (1 << (NFNLGRP_CONNTRACK_UPDATE - 1)) | \
                 (1 << (NFNLGRP_CONNTRACK_DESTROY - 1))
        self.events = open_netlink(netns, NETLINK_NETFILTER, groups, rcvbuf=16 << 20)
        self.events.setblocking(False)
        self.req = NlRequester(netns, NETLINK_NETFILTER)
        self.overruns = 0
        self.updates = 0

    def close(self) -> None:
        self.events.close()
        self.req.close()

    def read_events(self) -> list[tuple[KEvent, KCt]] | None:
        """Everything queued on the event socket; None when the kernel dropped events (ENOBUFS), after
        which the caller must resynchronise with :meth:`dump`."""
        out: list[tuple[KEvent, KCt]] = []
        while True:
            try:
                data = self.events.recv(1 << 20)
            except BlockingIOError:
                return out
            except OSError as exc:
                if exc.errno == 105:  # ENOBUFS
                    self.overruns += 1
                    return None
                raise
            for typ, flags, raw in split(data):
                if typ >> 8 != NFNL_SUBSYS_CTNETLINK:
                    continue
                sub = typ & 0xFF
                m = nfct_msg(raw)
                try:
                    m.decode()
                    ct = decode(m)
                except Exception as exc:  # a message this decoder does not know must not stop the events
                    log.warning("undecodable conntrack event: %s", exc)
                    continue
                if ct is None:
                    continue
                if sub == IPCTNL_MSG_CT_DELETE:
                    out.append((KEvent.DESTROY, ct))
                elif sub == IPCTNL_MSG_CT_NEW:
                    out.append((KEvent.NEW if flags & NLM_F_CREATE else KEvent.UPDATE, ct))

    def dump(self) -> list[KCt]:
        out: list[KCt] = []
        for fam in (4, 6):
            for m in self.req.request(_msg(fam, []), (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
                                      "dumping conntrack", dump=True):
                ct = decode(m)
                if ct is not None:
                    out.append(ct)
        return out

    def get(self, orig: CtTuple) -> KCt | None:
        try:
            ms = self.req.request(_msg(orig.family, [["CTA_TUPLE_ORIG", _tuple_attrs(orig)]]),
                                  (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET, f"conntrack get {orig}")
        except NetlinkError as exc:
            if exc.code == 2:  # ENOENT
                return None
            raise
        return decode(ms[0]) if ms else None

    def _change(self, orig: CtTuple, attrs: list[list[object]], what: str) -> bool:
        """``conntrack -U`` on one connection named by its full original tuple; False when it is gone."""
        try:
            self.req.request(_msg(orig.family, [["CTA_TUPLE_ORIG", _tuple_attrs(orig)], *attrs]),
                             (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW, f"{what} of {orig}")
        except NetlinkError as exc:
            if exc.code == 2:
                return False
            raise
        self.updates += 1
        return True

    def set_timeout(self, orig: CtTuple, seconds: int) -> bool:
        return self._change(orig, [["CTA_TIMEOUT", max(1, int(seconds))]], "setting the timeout")

    def set_liberal(self, orig: CtTuple) -> bool:
        """Both directions' ``IP_CT_TCP_FLAG_BE_LIBERAL`` (flags and mask, as ``nlattr_to_tcp`` reads them)."""
        flag = {"value": (IP_CT_TCP_FLAG_BE_LIBERAL, IP_CT_TCP_FLAG_BE_LIBERAL)}
        tcp = {"attrs": [["CTA_PROTOINFO_TCP_FLAGS_ORIGINAL", flag], ["CTA_PROTOINFO_TCP_FLAGS_REPLY", flag]]}
        return self._change(orig, [["CTA_PROTOINFO", {"attrs": [["CTA_PROTOINFO_TCP", tcp]]}]], "making TCP liberal")


