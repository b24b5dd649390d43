"""The routing table: connected routes from the port addresses plus static routes, longest prefix wins."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .config import IPAddr, IPNet, RouterConfig
from .errors import ConfigError


@dataclass(frozen=True, slots=True)
class Route:
    dst: IPNet
    port: int
    gateway: IPAddr | None = None  # None: on-link (connected)

    def next_hop(self, dst: IPAddr) -> IPAddr:
        return self.gateway if self.gateway is not None else dst

    def __str__(self) -> str:
        via = f" via {self.gateway}" if self.gateway is not None else ""
        return f"{self.dst}{via} port {self.port}"


class RouteError(ConfigError):
    pass


class RoutingTable:
    def __init__(self) -> None:
        self._routes: dict[int, list[Route]] = {4: [], 6: []}  # kept longest prefix first
        self._local: dict[bytes, int] = {}  # the router's own addresses -> port

    @classmethod
    def from_config(cls, config: RouterConfig) -> RoutingTable:
        table = cls()
        for pc in config.ports.values():
            for iface in pc.all_addresses():
                table._local[iface.ip.packed] = pc.port
                if not iface.ip.is_link_local:
                    table.add(Route(iface.network, pc.port))
        for sr in config.routes:
            if sr.port is not None:
                table.add(Route(sr.dst, sr.port, sr.via))
                continue
            assert sr.via is not None
            connected = table.lookup(sr.via)
            if connected is None or connected.gateway is not None:
                raise RouteError(f"{config.source}: route {sr.dst} via {sr.via}: the gateway is not on any "
                                 "port's subnet; give `port` too")
            table.add(Route(sr.dst, connected.port, sr.via))
        return table

    def add(self, route: Route) -> None:
        routes = self._routes[route.dst.version]
        routes.append(route)
        routes.sort(key=lambda r: r.dst.prefixlen, reverse=True)

    def routes(self) -> list[Route]:
        return self._routes[4] + self._routes[6]

    def lookup(self, dst: IPAddr | bytes) -> Route | None:
        addr = ipaddress.ip_address(dst) if isinstance(dst, bytes) else dst
        for route in self._routes[addr.version]:
            if addr in route.dst:
                return route
        return None

    def is_local(self, addr: bytes) -> bool:
        return addr in self._local
