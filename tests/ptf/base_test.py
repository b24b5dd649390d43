"""The base of offloadgen's PTF tests: a P4Runtime primary for the switch under test, plus the profile.

`offloadgen ptf` passes --test-params: grpc_addr, device_id, build_dir, target (softswitch|bmv2), profile.
The base pushes the pipeline from the build (skipped when the switch's cookie already matches), becomes
primary, collects packet-ins, and removes every flow entry after each test so tests stay independent.
"""

from __future__ import annotations

import functools
import queue
import time
from collections.abc import Callable
from typing import Any

import ptf
import ptf.testutils as tu
from p4.v1 import p4runtime_pb2
from ptf.base_tests import BaseTest
from scapy.layers.inet import IP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Packet

from offloadgen.profile import DROP_REASONS, Profile, load_profile
from runtime.client import StreamHandlers, SwitchClient
from runtime.entities import PacketIn, TableEntry
from runtime.pipeline import load_build

PEER_MAC = "02:bb:00:00:00:02"
PACKET_IN_TIMEOUT = 2.0
NEGATIVE_TIMEOUT = 0.3


def needs(feature: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Skip the test when the profile under test does not have `feature` (ipv6, nat, counters, …)."""

    def wrap(fn: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(fn)
        def run(self: FlowtableTest) -> None:
            if not self.profile_has(feature):
                self.skipTest(f"profile {self.profile.name!r} has no {feature}")
            fn(self)

        return run

    return wrap


requires_nat = needs("nat")


def with_vlan(fn: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(fn)
    def run(self: FlowtableTest) -> None:
        if not self.vlan_ports:
            self.skipTest(f"profile {self.profile.name!r} has no VLAN port (try --profile vlan)")
        fn(self)

    return run


class FlowtableTest(BaseTest):  # type: ignore[misc]
    profile: Profile

    def setUp(self) -> None:
        BaseTest.setUp(self)
        self.dataplane = ptf.dataplane_instance  # what testutils' send/verify use
        params = tu.test_params_get()
        self.profile = load_profile(params["profile"])
        self.pipeline = load_build(params["build_dir"], params["target"])
        self.packet_ins: queue.Queue[PacketIn] = queue.Queue()
        self.client = SwitchClient(params["grpc_addr"], device_id=int(params.get("device_id", 1)),
                                   election_id=(0, 100), p4info=self.pipeline.p4info,
                                   handlers=StreamHandlers(on_packet_in=self.packet_ins.put),
                                   name="ptf")
        self.client.connect()
        self.addCleanup(self.client.close)  # also when setUp fails after this point
        self.client.set_pipeline(self.pipeline)
        self.reasons = {name: code for code, name in self.pipeline.p4info.serializable_enum("punt_reason_t").items()}
        self.drop_reasons = {name: code for code, (name, _) in enumerate(DROP_REASONS, start=1)}
        self.clear_flows()
        self.dataplane.flush()

    def tearDown(self) -> None:
        try:
            self.clear_flows()
        finally:
            BaseTest.tearDown(self)

    # ---- the profile ------------------------------------------------------------------------------------
    @property
    def ports(self) -> list[int]:
        return [p.number for p in self.profile.ports]

    @property
    def vlan_ports(self) -> list[int]:
        return [p.number for p in self.profile.vlan_ports]

    @property
    def lan_port(self) -> int:
        return self.ports[0]

    @property
    def wan_port(self) -> int:
        """The last untagged port (tests on tagged ports are explicit)."""
        return [p.number for p in self.profile.ports if p.vlan is None][-1]

    def mac(self, port: int) -> str:
        return self.profile.port(port).mac

    def port_mtu(self, port: int) -> int:
        return self.profile.port(port).mtu

    def vlan_of(self, port: int) -> int:
        vid = self.profile.port(port).vlan
        assert vid is not None
        return vid

    def profile_has(self, feature: str) -> bool:
        return bool(getattr(self.profile, feature))

    def punts(self, exception: str) -> bool:
        return bool(getattr(self.profile.punt, exception))

    # ---- flow entries -----------------------------------------------------------------------------------
    def _flow(self, table: str, in_port: int, src: str, dst: str, proto: int, sport: int, dport: int) -> TableEntry:
        return TableEntry(table, {"in_port": in_port, "src_addr": src, "dst_addr": dst, "proto": proto,
                                  "src_port": sport, "dst_port": dport})

    def add_flow4(self, in_port: int, src: str, dst: str, proto: int, sport: int, dport: int, *, out: int,
                  smac: str, dmac: str, nat: tuple[str, str, int, int] | None = None) -> None:
        entry = self._flow("ingress.flow_v4", in_port, src, dst, proto, sport, dport)
        entry.action = "ingress.offload"
        params: dict[str, Any] = {"port": out, "smac": smac, "dmac": dmac}
        if nat is not None:
            entry.action = "ingress.offload_nat"
            params.update(saddr=nat[0], daddr=nat[1], sport=nat[2], dport=nat[3])
        entry.params = params
        self.client.insert([entry])

    def add_flow6(self, in_port: int, src: str, dst: str, proto: int, sport: int, dport: int, *, out: int,
                  smac: str, dmac: str) -> None:
        entry = self._flow("ingress.flow_v6", in_port, src, dst, proto, sport, dport)
        entry.action, entry.params = "ingress.offload", {"port": out, "smac": smac, "dmac": dmac}
        self.client.insert([entry])

    def delete_flow4(self, in_port: int, src: str, dst: str, proto: int, sport: int, dport: int) -> None:
        self.client.delete([self._flow("ingress.flow_v4", in_port, src, dst, proto, sport, dport)])

    def read_flow_counter4(self, in_port: int, src: str, dst: str, proto: int, sport: int,
                           dport: int) -> tuple[int, int]:
        want = self._flow("ingress.flow_v4", in_port, src, dst, proto, sport, dport)
        p4info = self.pipeline.p4info
        for entry in self.client.read_table("ingress.flow_v4", counters=True):
            if entry.encode(p4info).match == want.encode(p4info).match:
                assert entry.counter is not None
                return entry.counter.packets, entry.counter.bytes
        raise AssertionError("the flow entry is not on the switch")

    def read_counter(self, name: str, index: int) -> tuple[int, int]:
        """(packets, bytes) of one cell of an indexed counter, read over P4Runtime."""
        ent = p4runtime_pb2.Entity()
        ent.counter_entry.counter_id = self.pipeline.p4info.counter(name).id
        ent.counter_entry.index.index = index
        for got in self.client.read([ent]):
            return got.counter_entry.data.packet_count, got.counter_entry.data.byte_count
        raise AssertionError(f"counter {name}[{index}] is not readable")

    def clear_flows(self) -> None:
        for table in ("ingress.flow_v4", "ingress.flow_v6"):
            if any(t.name == table for t in self.pipeline.p4info.tables):
                entries = self.client.read_table(table)
                if entries:
                    self.client.delete(entries)

    # ---- packets ----------------------------------------------------------------------------------------
    def packet_out(self, port: int, frame: bytes) -> None:
        self.client.packet_out(frame, egress_port=port, _pad=0)

    def expect_packet_in(self, port: int, reason: str, timeout: float = PACKET_IN_TIMEOUT) -> bytes:
        """The next packet-in; asserts its ingress port and reason; returns the frame."""
        try:
            pin = self.packet_ins.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no packet-in with reason {reason} within {timeout} s") from None
        self.assertEqual(pin.metadata.get("ingress_port"), port, f"packet-in ({reason}): ingress port")
        self.assertEqual(pin.metadata.get("reason"), self.reasons[reason],
                         f"packet-in: reason {pin.metadata.get('reason')} instead of {reason}")
        return pin.payload

    def assert_no_packet_in(self, timeout: float = NEGATIVE_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.packet_ins.empty():
                pin = self.packet_ins.get()
                raise AssertionError(f"unexpected packet-in {dict(pin.metadata)}: {pin.payload[:34].hex()}")
            time.sleep(0.01)

    def tagged(self, pkt: Packet, port: int) -> Packet:
        """How `pkt` looks on the wire of `port`: with the port's VLAN tag if it has one."""
        vid = self.profile.port(port).vlan
        if vid is None:
            return pkt
        eth = pkt[Ether]
        return Ether(src=eth.src, dst=eth.dst) / Dot1Q(vlan=vid, type=eth.type) / eth.payload.copy()

    def forwarded(self, pkt: Packet, port: int, dmac: str = PEER_MAC) -> Packet:
        """`pkt` as the fast path sends it out of `port` without NAT: port MAC, next-hop MAC, TTL - 1."""
        out = pkt.copy()
        out[Ether].src, out[Ether].dst = self.mac(port), dmac
        if IP in out:
            out[IP].ttl -= 1
            del out[IP].chksum
        elif IPv6 in out:
            out[IPv6].hlim -= 1
        return self.tagged(Ether(bytes(out)), port)
