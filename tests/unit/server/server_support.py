"""Shared by the server's unit tests: a client of the server's REST API over a cluster in
memory, through httpx's ASGI transport (no sockets), and the steps the autoscaler's tests
take on such a cluster (start the placed replicas, read the replica count and events), and
the one instance the vertical autoscaler's tests resize."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from elastin.model.cluster import Allocation
from elastin.server.api import create_api
from elastin.server.auth import ensure_token
from elastin.server.cluster import Cluster
from elastin.server.reports import AllocReport


@contextlib.asynccontextmanager
async def api_client(cluster: Cluster, data_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A client of ``create_api(cluster, …)`` that sends the cluster token kept in
    ``data_dir``."""
    token = ensure_token(data_dir)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_api(cluster, token, data_dir)),
        base_url="http://test",
        headers={"Authorization": f"Bearer {token}"},
    ) as client:
        yield client


async def start_placed(cluster: Cluster) -> list[str]:
    """Schedule once and report every placed (pending) allocation running (ready: no health
    check); the ids of those running that should run."""
    await cluster.applier.schedule_once()
    allocs, _ = await cluster.views.all_allocations()
    await cluster.reports.update_many(
        {a.id: AllocReport(status="running", pid=10) for a in allocs if a.status == "pending"}
    )
    allocs, _ = await cluster.views.all_allocations()
    return [a.id for a in allocs if a.status == "running" and a.desired == "run"]


async def replicas(cluster: Cluster, app: str = "shop", workload: str = "api") -> int:
    """The replicas the workload's record asks for now (the autoscaler's last word)."""
    rec = await cluster.views.application(app)
    w = rec.app.workload(workload)
    assert w is not None
    return w.replicas


async def events_of(cluster: Cluster, kind: str) -> list[Any]:
    """Every event of type ``kind`` so far."""
    return [e for e in await cluster.views.events(0, 0) if e.type == kind]


VERTICAL_SPEC = """
app: shop
services:
  web:
    command: python3 -m http.server
    resources: {cpu: 500m, memory: 128Mi}
    autoscale: {vertical: {mode: MODE, min: {cpu: 100m}}}
"""


async def placed_vertical(cluster: Cluster, mode: str = "recommend") -> Allocation:
    """Apply ``VERTICAL_SPEC`` (vertical ``mode``), place its one instance (500m, 128Mi) and
    report it running; the allocation as placed."""
    await cluster.apps.apply(VERTICAL_SPEC.replace("MODE", mode))
    await cluster.applier.schedule_once()
    allocs, _ = await cluster.applier.repo.list_allocs()
    [a] = allocs
    await cluster.reports.update(a.id, AllocReport(status="starting"))
    await cluster.reports.update(a.id, AllocReport(status="running", pid=42))
    return a
