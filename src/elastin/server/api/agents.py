"""Routes for agents: registration, heartbeats, each node's blocking queries for its
allocations and mesh snapshot, mesh acknowledgements, and reports on allocations.

The hot ones (a node's allocations and mesh snapshot, heartbeats and reports: every agent,
all the time) answer with an encoded ``Response`` so that FastAPI does not validate the body
a second time; their ``response_model`` still documents it, and a test checks their bodies
against it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response, StreamingResponse

from elastin.mesh.model import MeshSnapshot
from elastin.model.cluster import Node
from elastin.model.codec import to_data
from elastin.server.api.models import (
    ERRORS,
    Acked,
    AllocationView,
    BatchResults,
    BatchStatusBody,
    Converged,
    ErrorBody,
    HeartbeatBody,
    NodeAllocations,
    NodeBody,
    NodeStatus,
    StatusBody,
)
from elastin.server.api.users import MAX_TAIL, alloc_view
from elastin.server.cluster import Cluster
from elastin.server.relay import RelayResponse, open_relay
from elastin.server.reports import AllocReport


def to_report(body: StatusBody) -> AllocReport:
    return AllocReport(
        status=body.status,
        reason=body.reason,
        exit_code=body.exit_code,
        restarts=body.restarts,
        pid=body.pid,
        ports=None if body.ports is None else tuple(body.ports),
        healthy=body.healthy,
        events=tuple(body.events),
    )


def agent_routes(cluster: Cluster, token: str) -> APIRouter:
    r = APIRouter(responses=ERRORS)

    @r.post("/v1/nodes", response_model=Node)
    async def register_node(body: NodeBody) -> dict[str, Any]:
        out: dict[str, Any] = to_data(await cluster.nodes.register(body.node))
        return out

    @r.post("/v1/nodes/{node_id}/heartbeat", response_model=NodeStatus)
    async def heartbeat(node_id: str, body: HeartbeatBody) -> Response:
        node = await cluster.nodes.heartbeat(node_id, body.usage, body.node_usage, body.mesh)
        return JSONResponse({"status": node.status})

    @r.get("/v1/nodes/{node_id}/allocations", response_model=NodeAllocations)
    async def node_allocations(
        node_id: str, index: int = 0, wait: float = Query(0.0, le=300)
    ) -> Response:
        allocs, rev = await cluster.nodes.allocations(node_id, index, wait)
        return JSONResponse({"index": rev, "allocations": [to_data(a) for a in allocs]})

    @r.get("/v1/nodes/{node_id}/mesh", response_model=MeshSnapshot)
    async def node_mesh(node_id: str, index: int = 0, wait: float = Query(0.0, le=300)) -> Response:
        # encoded by the feed, once per version for what every node shares
        body = await cluster.mesh.snapshot_json(node_id, index, wait)
        return Response(body, media_type="application/json")

    @r.get(
        "/v1/nodes/{node_id}/mesh/stream",
        response_class=StreamingResponse,
        responses={
            200: {
                "content": {"application/x-ndjson": {}},
                "description": "the node's MeshSnapshot as JSON, one line per version as it "
                "changes; a bare newline every 15 s of quiet (served in front of this app)",
            }
        },
    )
    async def node_mesh_stream(node_id: str) -> StreamingResponse:
        return StreamingResponse(cluster.mesh.stream(node_id), media_type="application/x-ndjson")

    @r.post("/v1/nodes/{node_id}/mesh/ack", response_model=Acked)
    async def node_mesh_ack(node_id: str, version: int) -> dict[str, Any]:
        cluster.mesh.ack(node_id, version)
        return {"version": version}

    @r.get("/v1/mesh/converged", response_model=Converged)
    async def mesh_converged(version: int, wait: float = Query(0.0, le=60)) -> dict[str, Any]:
        pending = await cluster.mesh.converged(version, wait)
        return {"version": version, "converged": not pending, "pending": pending}

    @r.get(
        "/v1/nodes/{node_id}/mesh/logs",
        response_class=StreamingResponse,
        responses={
            200: {"content": {"text/plain": {}}, "description": "JSON lines"},
            502: {"model": ErrorBody, "description": "the node's agent answered badly"},
            503: {"model": ErrorBody, "description": "the node's agent cannot be reached"},
        },
    )
    async def node_mesh_logs(
        node_id: str, tail: int = Query(100, ge=0), follow: bool = False
    ) -> Response:
        node = await cluster.views.node(node_id)
        params: dict[str, str | int | bool] = {"tail": min(tail, MAX_TAIL), "follow": follow}
        return RelayResponse(await open_relay(node, "/v1/mesh/logs", params, token))

    @r.post("/v1/allocations/{alloc_id}/status", response_model=AllocationView)
    async def alloc_status(alloc_id: str, body: StatusBody) -> Response:
        return JSONResponse(alloc_view(await cluster.reports.update(alloc_id, to_report(body))))

    @r.post("/v1/allocations/status", response_model=BatchResults)
    async def allocs_status(body: BatchStatusBody) -> Response:
        reports = {k: to_report(v) for k, v in body.reports.items()}
        return JSONResponse({"results": await cluster.reports.update_many(reports)})

    return r
