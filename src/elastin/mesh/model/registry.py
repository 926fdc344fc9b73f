"""The service registry: every named port of every service, with its endpoints (pure).

A service's named ports become endpoints: one per running instance that has the port, with
its address, port, protocol, node, allocation, weight, metadata and readiness. An instance is
*ready* when it runs, is not being stopped and — when its service has a health check — its
last verdict is healthy; only ready endpoints get traffic. An instance the server has asked
to stop (``desired: stop``) is not an endpoint any more from that revision on: that is what
lets every proxy drop it before its agent stops it (see ``docs/mesh.md``, "Draining").

``registry`` is what ``GET /v1/mesh/services`` returns, what ``elastin endpoints`` prints,
and what ``build_snapshot`` turns into each node's clusters — one source for all three.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from elastin.mesh.model.names import ClusterName
from elastin.model.cluster import Allocation
from elastin.model.workload import Application, Protocol


@dataclass(frozen=True)
class ServiceEndpoint:
    id: str  # <allocation id>-<port name>
    allocation: str
    instance: str  # app.workload[index]
    node: str
    address: str
    port: int
    ready: bool
    weight: int = 100
    metadata: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ServicePort:
    name: str
    protocol: Protocol
    cluster: str  # <app>.<service>.<port>, the mesh cluster's name
    endpoints: tuple[ServiceEndpoint, ...] = ()

    @property
    def ready(self) -> int:
        return sum(1 for e in self.endpoints if e.ready)


@dataclass(frozen=True)
class ServiceEntry:
    app: str
    name: str
    ports: tuple[ServicePort, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.app}/{self.name}"

    def port(self, name: str | None = None) -> ServicePort | None:
        """The named port, or the first one when ``name`` is None."""
        for p in self.ports:
            if name is None or p.name == name:
                return p
        return None


def cluster_name(app: str, service: str, port: str) -> str:
    """The mesh cluster of a service port (``ClusterName``'s one textual form)."""
    return str(ClusterName(app, service, port))


def is_endpoint(a: Allocation) -> bool:
    """Whether an instance may appear in the registry at all (it runs and should)."""
    return a.desired == "run" and a.status == "running"


def registry(
    apps: Mapping[str, Application],
    allocations: Iterable[Allocation],
    node_addresses: Mapping[str, str],
) -> tuple[ServiceEntry, ...]:
    live = sorted((a for a in allocations if is_endpoint(a)), key=lambda a: (a.index, a.id))
    out: list[ServiceEntry] = []
    for app_name in sorted(apps):
        for w in apps[app_name].workloads:
            if w.type != "service":
                continue
            mine = [a for a in live if a.app == app_name and a.workload == w.name]
            ports: list[ServicePort] = []
            for port in w.ports:
                endpoints = []
                for a in mine:
                    number = dict(a.ports).get(port.name)
                    if not number:
                        continue
                    ready = a.healthy is True if w.health is not None else a.healthy is not False
                    endpoints.append(
                        ServiceEndpoint(
                            id=f"{a.id}-{port.name}",
                            allocation=a.id,
                            instance=a.name,
                            node=a.node_id,
                            address=node_addresses.get(a.node_id, "127.0.0.1"),
                            port=number,
                            ready=ready,
                            metadata=(
                                ("index", str(a.index)),
                                ("kind", a.kind),
                                ("spec_version", str(a.spec_version)),
                            ),
                        )
                    )
                ports.append(
                    ServicePort(
                        port.name,
                        port.protocol,
                        cluster_name(app_name, w.name, port.name),
                        tuple(endpoints),
                    )
                )
            out.append(ServiceEntry(app_name, w.name, tuple(ports)))
    return tuple(out)


def find_service(entries: Iterable[ServiceEntry], ref: str) -> list[ServiceEntry]:
    """Entries matching ``ref``: ``service``, ``app/service`` or ``service.app``."""
    if "/" in ref:
        app, _, name = ref.partition("/")
    elif "." in ref:
        name, _, app = ref.partition(".")
    else:
        app, name = "", ref
    return [e for e in entries if e.name == name and (not app or e.app == app)]
