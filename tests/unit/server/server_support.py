"""Shared by the server's unit tests: a client of the server's REST API over a cluster in
memory, through httpx's ASGI transport (no sockets)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from elastin.server.api import create_api
from elastin.server.auth import ensure_token
from elastin.server.cluster import Cluster


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
