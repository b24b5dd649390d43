"""The routing table: connected routes from the port addresses plus static routes, longest prefix wins."""

from __future__ import annotations

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


#: Destinations remembered per routing table; the cache is dropped when full (a scan of thousands of
#: addresses must not grow it without bound) and whenever a route is added.
CACHE_SIZE = 65536


class RoutingTable:
    def __init__(self) -> None:
        self._routes: dict[int, list[Route]] = {4: [], 6: []}  # kept longest prefix first
        # The same routes as (network, mask) integers: every slow-path packet is routed, and matching
        # integers costs a fraction of building an ipaddress object and testing `in` per route.
        self._match: dict[int, list[tuple[int, int, Route]]] = {4: [], 6: []}
        self._cache: dict[bytes, Route | None] = {}
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
        self._match[route.dst.version] = [(int(r.dst.network_address), int(r.dst.netmask), r) for r in routes]
        self._cache.clear()

    def routes(self) -> list[Route]:
        return self._routes[4] + self._routes[6]

    def lookup(self, dst: IPAddr | bytes) -> Route | None:
        key = dst if isinstance(dst, bytes) else dst.packed
        try:
            return self._cache[key]
        except KeyError:
            pass
        if len(key) not in (4, 16):
            raise ValueError(f"route lookup: {key.hex()} is not an IPv4 or IPv6 address")
        addr = int.from_bytes(key, "big")
        found = None
        for net, mask, route in self._match[4 if len(key) == 4 else 6]:
            if addr & mask == net:
                found = route
                break
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()
        self._cache[key] = found
        return found

    def is_local(self, addr: bytes) -> bool:
        return addr in self._local
