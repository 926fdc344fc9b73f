"""The REST API over an in-memory store, through httpx's ASGI transport (no sockets)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_support import api_client

from elastin.model.cluster import Node
from elastin.model.codec import to_data
from elastin.model.resources import Resources
from elastin.server.api import create_api
from elastin.server.auth import ensure_token, token_matches
from elastin.server.cluster import Cluster
from elastin.store.memory import MemoryStore

SPEC = """
app: shop
services:
  web:
    command: python3 -m http.server
    resources: {cpu: 500m, memory: 128Mi}
"""


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Cluster]]:
    cluster = await Cluster.open(MemoryStore(), seed=1)
    async with api_client(cluster, tmp_path) as client:
        yield client, cluster


def test_token_is_private_and_stable(tmp_path: Path) -> None:
    t1 = ensure_token(tmp_path)
    assert (tmp_path / "token").stat().st_mode & 0o777 == 0o600
    assert ensure_token(tmp_path) == t1
    assert token_matches(t1, f"Bearer {t1}")
    assert not token_matches(t1, "Bearer nope")
    assert not token_matches(t1, None)
    assert not token_matches(t1, t1)


async def test_every_call_needs_the_token(api: tuple[httpx.AsyncClient, Cluster]) -> None:
    client, _ = api
    for path in (
        "/v1/apps",
        "/v1/openapi.json",
        "/v1/status",
        "/v1/metrics",
        "/v1/nodes/n1/mesh/stream",
    ):
        r = await client.get(path, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401, path
        assert "token" in r.json()["hint"]


async def test_apply_dry_run_and_validation_errors(api: tuple[httpx.AsyncClient, Cluster]) -> None:
    client, cluster = api
    r = await client.post("/v1/apps", json={"spec": SPEC, "dry_run": True})
    assert r.status_code == 200 and r.json()["changes"][0]["change"] == "add"
    assert await cluster.views.revision() == 0
    r = await client.post(
        "/v1/apps", json={"spec": SPEC.replace("cpu:", "cpus:"), "file": "shop.yaml"}
    )
    assert r.status_code == 422
    body = r.json()
    assert "shop.yaml:" in body["message"] and body["issues"][0]["path"]
    r = await client.post("/v1/apps", json={"spec": SPEC})
    assert r.status_code == 200 and r.json()["changed"]
    r = await client.get("/v1/openapi.json")
    assert r.status_code == 200 and "/v1/apps" in r.json()["paths"]


async def test_services_nodes_allocations_and_errors(
    api: tuple[httpx.AsyncClient, Cluster],
) -> None:
    client, cluster = api
    n = Node(id="n1", name="n1", capacity=Resources(2000, 4 << 30, 10 << 30))
    assert (await client.post("/v1/nodes", json={"node": to_data(n)})).status_code == 200
    await client.post("/v1/apps", json={"spec": SPEC})
    await cluster.applier.schedule_once()
    r = await client.get("/v1/nodes/n1/allocations", params={"index": 0})
    allocs = r.json()["allocations"]
    assert len(allocs) == 1
    aid = allocs[0]["id"]
    r = await client.post(f"/v1/allocations/{aid}/status", json={"status": "running", "pid": 7})
    assert r.json()["status"] == "running"
    r = await client.get("/v1/services")
    assert r.json()[0]["running"] == 1
    r = await client.post("/v1/scale/web", json={"replicas": 3})
    assert r.status_code == 200
    r = await client.post("/v1/scale/nope", json={"replicas": 3})
    assert r.status_code == 404 and "hint" in r.json()
    r = await client.get("/v1/allocations/zzz")
    assert r.status_code == 404
    r = await client.get("/v1/resources")
    assert r.status_code == 200
    r = await client.get("/v1/metrics")
    assert "elastin_allocations" in r.text
    r = await client.get("/v1/events")
    assert any(e["type"] == "app.applied" for e in r.json())


async def test_mesh_stream_is_pushed_on_plain_asgi(tmp_path: Path) -> None:
    import asyncio
    import json

    cluster = await Cluster.open(MemoryStore(), seed=1)
    token = ensure_token(tmp_path)
    app = create_api(cluster, token, tmp_path)
    sent: list[dict[str, object]] = []
    gone = asyncio.Event()

    async def receive() -> dict[str, object]:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body":
            gone.set()  # the agent goes away after the first snapshot

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/v1/nodes/n1/mesh/stream",
        "raw_path": b"/v1/nodes/n1/mesh/stream",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"authorization", f"Bearer {token}".encode())],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
    }
    task = asyncio.create_task(app(scope, receive, send))  # type: ignore[arg-type]
    await gone.wait()
    await cluster.apps.apply(SPEC)  # a change: the stream's next write notices the client is gone
    await asyncio.wait_for(task, 5)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    first = json.loads(sent[1]["body"])  # type: ignore[arg-type]
    assert first["node"] == "n1" and "clusters" in first
    assert cluster.mesh.pending(10**9) == ["n1"]  # it streamed: counted for draining


async def test_openapi_describes_every_request_and_response_body(
    api: tuple[httpx.AsyncClient, Cluster],
) -> None:
    client, _ = api
    doc = (await client.get("/v1/openapi.json")).json()
    undocumented = []
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            # a POST without a body takes its arguments in the query
            if method == "post" and "requestBody" not in op and not op.get("parameters"):
                undocumented.append(f"{method.upper()} {path}: request body")
            ok = op["responses"].get("200", {}).get("content", {})
            if not ok:
                undocumented.append(f"{method.upper()} {path}: no 200 content")
            for media, content in ok.items():
                if media == "application/json" and not content.get("schema"):
                    undocumented.append(f"{method.upper()} {path}: empty schema")
                if media == "application/json" and content.get("schema") == {}:
                    undocumented.append(f"{method.upper()} {path}: empty schema")
            if "422" not in op["responses"] or "401" not in op["responses"]:
                undocumented.append(f"{method.upper()} {path}: error bodies")
    assert not undocumented, "\n".join(undocumented)
    assert len(doc["paths"]) >= 28


async def test_agent_routes_answer_what_their_models_document(
    api: tuple[httpx.AsyncClient, Cluster],
) -> None:
    """The agents' hot routes skip FastAPI's response validation: check their bodies against
    the models the OpenAPI document names."""
    from pydantic import TypeAdapter

    from elastin.mesh.model import MeshSnapshot
    from elastin.server.api.models import AllocationView, BatchResults, NodeAllocations

    client, cluster = api
    n = Node(id="n1", name="n1", capacity=Resources(2000, 4 << 30, 10 << 30))
    await client.post("/v1/nodes", json={"node": to_data(n)})
    await client.post("/v1/apps", json={"spec": SPEC})
    await cluster.applier.schedule_once()
    r = await client.get("/v1/nodes/n1/allocations")
    body = NodeAllocations.model_validate(r.json())
    (a,) = body.allocations
    r = await client.post(f"/v1/allocations/{a.id}/status", json={"status": "starting"})
    AllocationView.model_validate(r.json())
    r = await client.post(
        "/v1/allocations/status", json={"reports": {a.id: {"status": "running", "pid": 9}}}
    )
    assert BatchResults.model_validate(r.json()).results == {a.id: "ok"}
    r = await client.post("/v1/nodes/n1/heartbeat", json={"usage": {}})
    assert r.json() == {"status": "ready"}
    r = await client.get("/v1/nodes/n1/mesh")
    TypeAdapter(MeshSnapshot).validate_python(r.json())


async def test_a_report_that_breaks_the_lifecycle_is_refused(
    api: tuple[httpx.AsyncClient, Cluster],
) -> None:
    client, cluster = api
    n = Node(id="n1", name="n1", capacity=Resources(2000, 4 << 30, 10 << 30))
    await client.post("/v1/nodes", json={"node": to_data(n)})
    await client.post("/v1/apps", json={"spec": SPEC})
    await cluster.applier.schedule_once()
    (a,) = (await client.get("/v1/nodes/n1/allocations")).json()["allocations"]
    r = await client.post(f"/v1/allocations/{a['id']}/status", json={"status": "failed"})
    assert r.status_code == 200
    r = await client.post(f"/v1/allocations/{a['id']}/status", json={"status": "running"})
    assert r.status_code == 409 and "cannot go from" in r.json()["message"]
    r = await client.post(f"/v1/allocations/{a['id']}/status", json={"status": "dancing"})
    assert r.status_code == 422


async def test_polled_user_routes_answer_what_their_models_document(
    api: tuple[httpx.AsyncClient, Cluster],
) -> None:
    """The routes clients poll skip FastAPI's response validation too: their bodies must
    match the models the OpenAPI document names."""
    from pydantic import TypeAdapter

    from elastin.model.cluster import Event
    from elastin.server.api.models import (
        AllocationView,
        NodeView,
        ServiceDetail,
        ServiceSummary,
        SettlementAnswer,
    )

    client, cluster = api
    n = Node(id="n1", name="n1", capacity=Resources(2000, 4 << 30, 10 << 30))
    await client.post("/v1/nodes", json={"node": to_data(n)})
    await client.post("/v1/apps", json={"spec": SPEC})
    await cluster.applier.schedule_once()
    checks: list[tuple[str, Any]] = [
        ("/v1/allocations", list[AllocationView]),  # type: ignore[valid-type]
        ("/v1/services", list[ServiceSummary]),
        ("/v1/services/web", ServiceDetail),
        ("/v1/nodes", list[NodeView]),  # type: ignore[valid-type]
        ("/v1/events", list[Event]),
        ("/v1/apps/shop/settlement", SettlementAnswer),
    ]
    for path, model in checks:
        r = await client.get(path)
        assert r.status_code == 200, path
        body = r.json()
        assert body, path
        TypeAdapter(model).validate_python(body, strict=False)
    (a,) = (await client.get("/v1/allocations")).json()
    r = await client.get(f"/v1/allocations/{a['id']}")
    AllocationView.model_validate(r.json())


async def test_a_malformed_request_gets_the_apis_own_error_body(
    api: tuple[httpx.AsyncClient, Cluster],
) -> None:
    client, _ = api
    r = await client.get("/v1/allocations/x/logs", params={"tail": 10**9})
    body = r.json()
    assert r.status_code == 422 and body["error"] == "Invalid" and "detail" not in body
    assert body["message"].startswith("query.tail: ") and "issues" not in body
    r = await client.post("/v1/scale/web", json={"replicas": "many"})
    assert r.status_code == 422 and "replicas" in r.json()["message"]
