"""Routes for agents: registration, heartbeats, one-second metrics reports, each node's
blocking queries for its allocations and mesh snapshot, mesh acknowledgements, and reports on
allocations.

The hot ones (a node's allocations and mesh snapshot, heartbeats and reports: every agent,
all the time) answer with an encoded ``Response`` so that FastAPI does not validate the body
a second time; their ``response_model`` still documents it, and a test checks their bodies
against it.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from elastin.mesh.model import MeshSnapshot
from elastin.mesh.model.names import ClusterName
from elastin.model.cluster import Node
from elastin.model.codec import to_data
from elastin.model.resources import Resources
from elastin.model.workload import MAX_APP_GAUGES
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
from elastin.server.errors import Invalid, NotFound
from elastin.server.relay import RelayResponse, open_relay
from elastin.server.reports import AllocReport
from elastin.server.telemetry import vet_report
from elastin.server.windows import (
    MAX_CLOCK_SKEW,
    MAX_ENTRIES,
    MAX_REPORT_BYTES,
    ClockSkew,
    parse_report,
)
from elastin.serving import json_error

_NUMBER = {"type": "number", "minimum": 0}
_ENDPOINT = {
    "type": "object",
    "properties": {"requests": _NUMBER, "active": _NUMBER, "avg_ms": _NUMBER, "max_ms": _NUMBER},
    "required": ["requests"],
}
# the metrics report's body (elastin.agent.sampling builds it, elastin.server.windows reads
# it): parsed by hand on the route (every agent, every second), documented here
METRICS_REPORT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": f"an agent's metrics report (at most {MAX_REPORT_BYTES} bytes and "
    f"{MAX_ENTRIES} instances, ports or endpoints of a port)",
    "properties": {
        "at": {
            **_NUMBER,
            "description": "the agent's wall clock when it sampled (a report more than "
            f"{MAX_CLOCK_SKEW:.0f} s from the server's clock is refused: 422)",
        },
        "mono": {
            **_NUMBER,
            "description": "the agent's monotonic clock when it sampled: rates are counted "
            "over its difference from the previous report's",
        },
        "series": {
            "type": "string",
            "description": "the agent process's id: another one (or a time that went back) "
            "starts a new series (no rate from its first report)",
        },
        "interval": {**_NUMBER, "description": "seconds between the agent's reports"},
        "early": {
            "type": "boolean",
            "description": "sent before its interval was over because a port's load jumped: "
            "its rates stand for their second alone (not merged with an earlier report's) and "
            "the autoscaler evaluates the services of its `jumped` ports at once",
        },
        "jumped": {
            "type": "array",
            "items": {"type": "string"},
            "description": "an early report's ports whose load jumped (<app>.<service>.<port>)",
        },
        "instances": {
            "type": "object",
            "description": "allocation id -> its instance on this node (one the store does "
            "not have on this node is left out; app and workload are the allocation's)",
            "additionalProperties": {
                "type": "object",
                "properties": {
                    "app": {"type": "string"},
                    "workload": {"type": "string"},
                    "cpu": {**_NUMBER, "description": "millicores used since the last sample"},
                    "memory": {**_NUMBER, "description": "bytes"},
                    "cpu_request": _NUMBER,
                    "memory_request": _NUMBER,
                    "ready": {"type": "boolean"},
                    "gauges": {
                        "type": "object",
                        "description": "application gauges read from the instance's own "
                        "Prometheus endpoint: metric name -> a finite number (at most "
                        f"{MAX_APP_GAUGES}; left out when none was read)",
                        "additionalProperties": {"type": "number"},
                    },
                },
                "required": ["app", "workload", "cpu", "memory"],
            },
        },
        "ports": {
            "type": "object",
            "description": "<app>.<service>.<port> -> this node's proxy's counters",
            "additionalProperties": {
                "type": "object",
                "properties": {
                    "mode": {"type": "string", "enum": ["http", "tcp"]},
                    "requests": {**_NUMBER, "description": "cumulative"},
                    "errors": {**_NUMBER, "description": "cumulative: 5xx, broken responses"},
                    "active": _NUMBER,
                    "queued": _NUMBER,
                    "avg_ms": {**_NUMBER, "description": "the last 1,024 requests"},
                    "max_ms": {**_NUMBER, "description": "the longest since the last report"},
                    "endpoints": {
                        "type": "object",
                        "description": "allocation id -> its share (an allocation the store "
                        "does not have for this service is left out)",
                        "additionalProperties": _ENDPOINT,
                    },
                },
                "required": ["requests"],
            },
        },
    },
    "required": ["at"],
}


MAX_WAKE_ENTRIES = 1000  # service ports in one wake at most


class WakeBody(BaseModel):
    """Requests a node's proxy holds for services scaled to zero, per service port
    (``<app>.<service>.<port>``)."""

    held: dict[str, int] = Field(
        description="service port -> requests held (at least 1)", max_length=MAX_WAKE_ENTRIES
    )


class Woken(BaseModel):
    services: list[str]  # app/service: each now counts its held requests


class MetricsTaken(BaseModel):
    node: str
    instances: int
    ports: int


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
        resize_refused=None
        if body.resize_refused is None
        else (
            Resources(body.resize_refused.refused.cpu, body.resize_refused.refused.memory),
            Resources(body.resize_refused.running.cpu, body.resize_refused.running.memory),
        ),
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

    @r.post(
        "/v1/nodes/{node_id}/metrics",
        response_model=MetricsTaken,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": METRICS_REPORT_SCHEMA}},
            }
        },
        responses={413: {"model": ErrorBody, "description": "the report is too large"}},
    )
    async def node_metrics(node_id: str, request: Request) -> Response:
        # every agent, every second: read by hand, kept in memory (never the store)
        raw = await request.body()
        if len(raw) > MAX_REPORT_BYTES:
            return json_error(
                413,
                "TooLarge",
                f"the metrics report of node {node_id} has {len(raw)} bytes; "
                f"the most is {MAX_REPORT_BYTES}",
                "the node serves too many instances or service ports for one report; give it "
                "fewer, or raise --metrics-interval on its agent (a larger report is refused "
                "each time)",
            )
        try:
            report = parse_report(json.loads(raw))
        except ValueError as e:  # also bad JSON (JSONDecodeError is one)
            raise Invalid(
                f"the metrics report of node {node_id} is malformed: {e}",
                hint="agents build it (elastin.agent.sampling); is this agent of another "
                "Elastin version than the server?",
            ) from None
        if not cluster.telemetry.knows(node_id):
            raise NotFound(
                f"node {node_id!r} sent no heartbeat to this server yet",
                hint="the agent registers and sends its heartbeat first; its next metrics "
                "report is taken",
            )
        # only what the store has on that node (app and workload the allocation's)
        version, allocs = await cluster.mesh.allocations()
        report = vet_report(report, node_id, cluster.telemetry.live_allocations(version, allocs))
        try:
            cluster.telemetry.record_metrics(node_id, report)
        except ClockSkew as e:
            raise Invalid(
                f"the metrics report of node {node_id} is not taken: {e}",
                hint="set the node's clock right (NTP: `timedatectl`, `chronyc tracking`); "
                "its reports are taken again as soon as it is",
            ) from None
        return JSONResponse(
            {"node": node_id, "instances": len(report.instances), "ports": len(report.ports)}
        )

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

    @r.post("/v1/nodes/{node_id}/wake", response_model=Woken)
    async def node_wake(node_id: str, body: WakeBody) -> dict[str, Any]:
        # a node's proxy holds requests for a service scaled to zero: start a replica now
        # (memory only; the agent repeats it every second while requests wait)
        wakeable = await cluster.mesh.wakeable(node_id)
        if wakeable is None:
            raise NotFound(
                f"node {node_id!r} is not registered with this server",
                hint="the agent registers first; its next wake is taken",
            )
        services: dict[tuple[str, str], int] = {}  # a service's ports: the most held
        at_zero: dict[tuple[str, str], bool] = {}
        for name, held in body.held.items():
            try:
                port = ClusterName.parse(name)
            except ValueError:
                raise Invalid(
                    f"the wake of node {node_id} names {name[:120]!r}, not a service port "
                    "<app>.<service>.<port>",
                    hint="agents build it from their proxy's backends; is this agent of "
                    "another Elastin version than the server?",
                ) from None
            if not 1 <= held <= 1_000_000:
                raise Invalid(
                    f"the wake of node {node_id}: {held} requests held for {name}; "
                    "expected 1..1000000"
                )
            if name not in wakeable:
                # not a scale-to-zero port in the current mesh version (the node's proxy
                # may run an older one, or the agent is wrong): nothing to start
                continue
            key = (port.app, port.service)
            services[key] = max(held, services.get(key, 0))
            at_zero[key] = wakeable[name]
        for (app, service), held in services.items():
            cluster.autoscaler.held_requests(app, service, held, at_zero[(app, service)])
        return {"services": sorted(f"{app}/{service}" for app, service in services)}

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
