"""The SDK's mesh client: find a service's endpoints, and follow them as they change.

::

    from elastin.sdk import MeshClient
    mesh = MeshClient()                      # the local server, found like the CLI finds it
    for e in mesh.resolve("shop/catalog"):   # ready endpoints of the service's first port
        print(e.address, e.port, e.node)
    for endpoints in mesh.watch("catalog", timeout=60):
        ...                                  # the new list, each time it changes

Inside a workload, calls should go through the mesh: ``upstream("catalog")`` gives the
local listener Elastin made for the caller (``ELASTIN_UPSTREAM_CATALOG_URL``), which
balances, retries and reports — ``resolve`` is for tools and for clients that balance
themselves. Both read the service registry (``GET /v1/mesh/services``); ``watch`` is a
blocking query on it, not polling.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

from elastin.client.errors import ClientError
from elastin.client.http import Client
from elastin.sdk.engines import EngineError


@dataclass(frozen=True)
class ServiceEndpoint:
    """One endpoint of a service port, as the registry has it."""

    address: str
    port: int
    node: str
    instance: str
    allocation: str
    ready: bool

    @property
    def host_port(self) -> str:
        return f"{self.address}:{self.port}"


def upstream(service: str, url: bool = True) -> str:
    """The mesh listener Elastin made for this workload to call ``service`` (its
    ``upstreams:``): ``http://127.0.0.1:PORT`` or, with ``url=False``, ``127.0.0.1:PORT``."""
    key = service.upper().replace("-", "_")
    name = f"ELASTIN_UPSTREAM_{key}" + ("_URL" if url else "")
    value = os.environ.get(name)
    if not value:
        raise EngineError(
            f"${name} is not set: {service!r} is not an upstream of this workload",
            f"add it to the workload's `upstreams:` in the spec, e.g. upstreams: [{service}]",
        )
    return value


class MeshClient:
    def __init__(self, url: str | None = None, token: str | None = None) -> None:
        try:
            self._client = Client(url, token) if url and token else Client.discover()
        except ClientError as e:
            raise EngineError(e.message, e.hint) from None

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> MeshClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _query(
        self, service: str, port: str | None, ready_only: bool, index: int, wait: float
    ) -> tuple[int, list[ServiceEndpoint]]:
        try:
            data = self._client.mesh_services(service, index=index, wait=wait)
        except ClientError as e:  # ApiError included: a 404 names the unknown service
            raise EngineError(e.message, e.hint) from None
        services = data["services"]
        if len(services) > 1:
            refs = ", ".join(f"{s['app']}/{s['name']}" for s in services)
            raise EngineError(f"{service!r} names several services: {refs}", "use app/name")
        ports = services[0]["ports"]
        chosen = [p for p in ports if port is None or p["name"] == port][:1]
        if not chosen:
            names = ", ".join(p["name"] for p in ports) or "none"
            what = f"no port {port!r}" if port else "no ports"
            raise EngineError(f"service {service!r} has {what}", f"its ports: {names}")
        endpoints = [
            ServiceEndpoint(
                e["address"], e["port"], e["node"], e["instance"], e["allocation"], e["ready"]
            )
            for e in chosen[0]["endpoints"]
            if e["ready"] or not ready_only
        ]
        return int(data["index"]), endpoints

    def resolve(
        self, service: str, port: str | None = None, ready_only: bool = True
    ) -> list[ServiceEndpoint]:
        """The endpoints of ``service`` (``name`` or ``app/name``) on ``port`` (default: its
        first port); only ready ones unless ``ready_only=False``."""
        return self._query(service, port, ready_only, 0, 0.0)[1]

    def watch(
        self,
        service: str,
        port: str | None = None,
        ready_only: bool = True,
        timeout: float | None = None,
    ) -> Iterator[list[ServiceEndpoint]]:
        """Yield the endpoints now, then again each time they change, until ``timeout``
        seconds have passed (forever when None) or the caller stops iterating."""
        deadline = None if timeout is None else time.monotonic() + timeout
        index, current = self._query(service, port, ready_only, 0, 0.0)
        yield current
        while deadline is None or time.monotonic() < deadline:
            left = 30.0 if deadline is None else max(0.0, min(30.0, deadline - time.monotonic()))
            if left <= 0:
                return
            index, endpoints = self._query(service, port, ready_only, index, left)
            if endpoints != current:
                current = endpoints
                yield current
