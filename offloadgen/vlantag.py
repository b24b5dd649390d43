"""Make a test host's interface an 802.1Q access port without the kernel's 8021q module.

This kernel has no ``CONFIG_VLAN_8021Q`` (``ip link add ... type vlan`` fails) and no ``act_vlan``, so a host
on a tagged switch port gets two tiny eBPF programs on its interface instead, attached with tcx (Linux 6.6+,
no qdisc, no bpffs, no compiler needed):

- egress: ``bpf_skb_vlan_push(skb, htons(ETH_P_8021Q), vid)`` -- every frame the host sends carries the tag;
- ingress: ``bpf_skb_vlan_pop(skb)`` -- the receive path has already moved a tag into the skb's metadata
  (``skb_vlan_untag``); without the pop a tagged frame with no VLAN device would be ``PACKET_OTHERHOST``
  and IP would drop it.

The attachment lives as long as the interface (it goes with the namespace), so the loader can exit. Run it
inside the host's namespace, since tcx resolves the interface index there::

    ip netns exec NS python -m offloadgen.vlantag eth0 100
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import sys

SYS_BPF = 321  # x86_64
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_TYPE_SCHED_CLS = 3
BPF_TCX_INGRESS = 46
BPF_TCX_EGRESS = 47
FN_SKB_VLAN_PUSH = 18
FN_SKB_VLAN_POP = 19


class VlanTagError(OSError):
    pass


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def _mov_imm(reg: int, imm: int) -> bytes:
    return _insn(0xB7, dst=reg, imm=imm)  # BPF_ALU64 | BPF_MOV | BPF_K


def _call(fn: int) -> bytes:
    return _insn(0x85, imm=fn)  # BPF_JMP | BPF_CALL


EXIT = _insn(0x95)
TC_ACT_OK = 0


def push_program(vid: int) -> bytes:
    # r1 is the skb already; the protocol argument is big-endian (htons(0x8100) read as a little-endian int).
    return (_mov_imm(2, int.from_bytes(b"\x81\x00", "little")) + _mov_imm(3, vid) + _call(FN_SKB_VLAN_PUSH)
            + _mov_imm(0, TC_ACT_OK) + EXIT)


def pop_program() -> bytes:
    return _call(FN_SKB_VLAN_POP) + _mov_imm(0, TC_ACT_OK) + EXIT


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    ret = int(libc.syscall(SYS_BPF, cmd, attr, len(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise VlanTagError(err, f"bpf({cmd}): {os.strerror(err)}")
    return ret


def load(program: bytes, name: str) -> int:
    insns = ctypes.create_string_buffer(program, len(program))
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(65536)
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("<IIQQIIQII16s", attr, 0, BPF_PROG_TYPE_SCHED_CLS, len(program) // 8,
                     ctypes.addressof(insns), ctypes.addressof(license_), 1, len(log), ctypes.addressof(log),
                     0, 0, name.encode()[:15])
    try:
        return _bpf(BPF_PROG_LOAD, attr)
    except VlanTagError as exc:
        raise VlanTagError(exc.errno, f"loading {name}: {exc.strerror}\n{log.value.decode(errors='replace')}") from None


def attach(ifindex: int, prog_fd: int, attach_type: int) -> None:
    attr = ctypes.create_string_buffer(64)
    struct.pack_into("<IIII", attr, 0, ifindex, prog_fd, attach_type, 0)
    try:
        _bpf(BPF_PROG_ATTACH, attr)
    except VlanTagError as exc:
        raise VlanTagError(exc.errno, f"attaching with tcx: {exc.strerror} (tcx needs Linux 6.6 or later with "
                           "CONFIG_NET_XGRESS; run as root)") from None


def tag_interface(iface: str, vid: int) -> None:
    """Push ``vid`` on everything ``iface`` sends and pop the tag of everything it receives."""
    if not 1 <= vid <= 4094:
        raise ValueError(f"VLAN id {vid} is outside 1-4094")
    ifindex = socket.if_nametoindex(iface)
    for prog, kind in ((push_program(vid), BPF_TCX_EGRESS), (pop_program(), BPF_TCX_INGRESS)):
        fd = load(prog, "og_vlan_push" if kind == BPF_TCX_EGRESS else "og_vlan_pop")
        try:
            attach(ifindex, fd, kind)
        finally:
            os.close(fd)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: python -m offloadgen.vlantag IFACE VID", file=sys.stderr)
        return 2
    try:
        tag_interface(argv[0], int(argv[1]))
    except (OSError, ValueError) as exc:
        print(f"vlantag: {argv[0]}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
