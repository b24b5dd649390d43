"""The Linux kernel as the slow path: switch ports as TAP interfaces in a router namespace, the router
config as routes and an nftables ruleset there, and the kernel's conntrack (over ctnetlink) driving the
flowtable, the way a hardware-offload driver mirrors the kernel's established connections.

Parts: :mod:`.netns` (the namespace, commands in it), :mod:`.tap` (TAPs and their I/O thread),
:mod:`.nft` (the ruleset), :mod:`.ctnetlink` (events, timeout refresh, liberal TCP, dump),
:mod:`.rtnl` (route and neighbour lookups), :mod:`.slowpath` (:class:`KernelSlowPath`) and
:mod:`.offload` (the flowtable glue for kernel connections).
"""

from .netns import KernelError

__all__ = ["KernelError"]
