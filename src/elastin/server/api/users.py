"""Routes for users (the CLI, the SDK, scripts): applications, services, allocations and
their logs, nodes, events, the change stream, reports and metrics. Translation only: each
handler calls one of the cluster's rooms and shapes the answer.

The routes that clients poll (allocations, services, nodes, events, settlement) answer with
an encoded ``JSONResponse`` so that FastAPI does not validate every body a second time (100
allocations polled every 10 ms cost the daemon a core's tenth); their ``response_model``
still documents the body, and a test checks each against it."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from elastin import __version__
from elastin.mesh.model.registry import find_service
from elastin.model.cluster import Allocation, Event
from elastin.model.codec import to_data
from elastin.model.errors import UnitError
from elastin.model.resources import Resources
from elastin.scheduler.accounting import ResourceReport
from elastin.server.api.models import (
    ERRORS,
    AllocationView,
    ApplyAnswer,
    ApplyBody,
    Deleted,
    ErrorBody,
    NodeView,
    Registry,
    ScaleBody,
    Scaled,
    ServerStatus,
    ServiceDetail,
    ServiceSummary,
    SettlementAnswer,
    StopBody,
    Stopped,
    Traffic,
)
from elastin.server.apps import scale_note
from elastin.server.cluster import Cluster
from elastin.server.errors import Conflict, Invalid, NotFound
from elastin.server.metrics import CONTENT_TYPE, render_metrics, store_counters
from elastin.server.relay import RelayResponse, open_relay
from elastin.server.repo import AppRecord
from elastin.server.views import AllocFilter
from elastin.server.windows import WINDOW_SECONDS
from elastin.store.base import CompactedError

MAX_TAIL = 100_000  # most lines a log request may ask for
SINCE = "^[0-9A-Za-z:.+-]{0,64}$"  # a time or a duration; the agent reads it (agent/api.py)


class Metric(BaseModel):
    current: Any = Field(description="the value now (None: not measured)")
    series: list[Any] = Field(description="one value a second, oldest first, as `times`")


class ServiceMetrics(BaseModel):
    """One service's live metrics from the agents' one-second reports (memory only):
    cpu (millicores), memory (bytes), their requests and utilisation, replicas and ready
    ones, requests and errors per second, in flight, average and longest response time
    (ms) through the mesh; p99 (ms) from the proxies' latency histograms, kept only for a
    service that autoscales on its p99 (null otherwise, docs/mesh.md "Metrics")."""

    app: str
    service: str
    at: int = Field(description="the server's time (s) of the last value")
    times: list[int]
    total: dict[str, Metric]
    ports: dict[str, dict[str, Any]] = Field(
        description="port -> traffic metrics, and `replicas`: allocation -> its metrics"
    )
    replicas: dict[str, dict[str, Any]] = Field(
        description="allocation -> `node`, and its usage and traffic metrics"
    )


class MetricStatus(BaseModel):
    metric: str = Field(description="cpu, memory, rps, inflight, p99 or the gauge's name")
    kind: str
    target: float = Field(
        description="as the spec's unit: a fraction of the request (cpu, memory), per "
        "second (rps), requests (inflight), seconds (p99)"
    )
    value: float | None = Field(description="the value decided from (None: no value)")
    proposal: int | None = Field(description="the replicas this metric asked for")
    note: str = Field(description="what was left out or assumed; p99: where its value comes from")
    source: str = Field(
        "",
        description="p99: p99_response_ms (measured, the proxies' latency histograms) or "
        "max_response_ms (the longest response, an upper bound: no histogram)",
    )


class AutoscaleStatus(BaseModel):
    """An autoscaled service's last decision (``server/autoscaler.py``, memory only)."""

    current: int
    desired: int
    recommended: int = Field(description="the largest proposal, before windows, rates, bounds")
    min: int
    max: int
    limit: str = Field(description="what limited the change (docs/autoscaling.md); '' nothing")
    reason: str
    ready: int
    replicas: int
    metrics: list[MetricStatus]
    at: float = Field(description="when it was decided (0: not yet)")


class ServiceWithAutoscale(ServiceSummary):
    autoscale: AutoscaleStatus | None = Field(
        None, description="a service with horizontal autoscaling: its last decision"
    )


class ScaledService(Scaled):
    note: str = Field("", description="what follows (an autoscaled service: its bounds)")


def event_of(subject: str, service: str) -> bool:
    """Whether an event's ``subject`` (``app/name``, or an instance's ``app.name[i] id``)
    is about ``service`` (``name`` or ``app/name``)."""
    head = subject.split(" ", 1)[0]
    if "/" in head:
        app, _, name = head.partition("/")
    else:
        app, _, rest = head.partition(".")
        name = rest.split("[", 1)[0] if "[" in rest else ""
    want_app, _, want = service.rpartition("/")
    return bool(name) and name == want and (not want_app or want_app == app)


class ResizeBody(BaseModel):
    """New cpu and memory requests (and limits) for one running instance."""

    cpu: str | int | float = Field(description='cores or millicores: 1, 0.5, "500m"')
    memory: str | int = Field(description='bytes or a size: "128Mi", "1Gi" (bare numbers: MiB)')


class Resized(BaseModel):
    """What a resize did: ``in_place`` (its node had room; the agent applies the new limits
    to the running instance, same pid) or ``moved`` (a new allocation, ``to``, on ``node``;
    the old one stops)."""

    allocation: str
    action: str = Field(description="in_place | moved")
    node: str
    to: str = ""
    resources: dict[str, int] = Field(description="cpu (millicores), memory (bytes)")
    message: str


class ExecBody(BaseModel):
    """A command to run inside a running instance: an argv, never a shell string."""

    command: list[str] = Field(
        min_length=1, max_length=4096, description='the program and its arguments: ["ls", "-l"]'
    )
    timeout: float = Field(30.0, gt=0, le=3600, description="seconds before it is killed")


def alloc_view(a: Allocation) -> dict[str, Any]:
    d: dict[str, Any] = to_data(a)
    d["name"] = a.name
    return d


def user_routes(cluster: Cluster, token: str, data_dir: Path) -> APIRouter:
    r = APIRouter(responses=ERRORS)
    views = cluster.views

    # --- applications -----------------------------------------------------------------
    @r.post("/v1/apps", response_model=ApplyAnswer)
    async def apply_app(body: ApplyBody) -> dict[str, Any]:
        res = await cluster.apps.apply(
            body.spec, file=body.file, base_dir=body.base_dir, dry_run=body.dry_run
        )
        out: dict[str, Any] = to_data(res)
        out["changed"] = res.changed
        return out

    @r.get("/v1/apps", response_model=list[AppRecord])
    async def list_apps() -> list[dict[str, Any]]:
        return [to_data(rec) for rec in await views.applications()]

    @r.get("/v1/apps/{name}", response_model=AppRecord)
    async def get_app(name: str) -> dict[str, Any]:
        out: dict[str, Any] = to_data(await views.application(name))
        return out

    @r.get("/v1/apps/{name}/settlement", response_model=SettlementAnswer)
    async def app_settlement(
        name: str,
        index: int = 0,
        wait: float = Query(0.0, le=300),
        generation: int = Query(0, ge=0),
    ) -> Response:
        rev, s = await cluster.apps.settlement(name, index, wait, generation)
        out: dict[str, Any] = to_data(s)
        out.update(index=rev, summary=s.summary, done=s.done)
        return JSONResponse(out)

    @r.delete("/v1/apps/{name}", response_model=Deleted)
    async def delete_app(name: str) -> dict[str, Any]:
        return {"deleted": name, "revision": await cluster.apps.delete(name)}

    # --- services ---------------------------------------------------------------------
    @r.get("/v1/services", response_model=list[ServiceWithAutoscale])
    async def list_services() -> Response:
        out = await views.services()
        autoscaled = {
            (rec.app.name, w.name): view
            for rec in await views.applications()
            for w in rec.app.workloads
            if (view := cluster.autoscaler.view(rec.app.name, w)) is not None
        }
        for s in out:
            if (view := autoscaled.get((s["app"], s["name"]))) is not None:
                s["autoscale"] = view
        return JSONResponse(out)

    @r.get("/v1/services/{ref:path}", response_model=ServiceDetail)
    async def get_service(ref: str) -> Response:
        rec, w, allocs = await views.service(ref)
        return JSONResponse(
            {
                "app": rec.app.name,
                "workload": to_data(w),
                "version": rec.versions.get(w.name, 0),
                "allocations": [alloc_view(a) for a in allocs],
            }
        )

    @r.post("/v1/scale/{ref:path}", response_model=ScaledService)
    async def scale(ref: str, body: ScaleBody) -> dict[str, Any]:
        rec = await cluster.apps.scale(ref, body.replicas)
        w = rec.app.workload(ref.rpartition("/")[2])
        note = "" if w is None else scale_note(ref, w, body.replicas)
        return {"app": rec.app.name, "generation": rec.generation, "note": note}

    @r.post("/v1/stop", response_model=Stopped)
    async def stop(body: StopBody) -> dict[str, Any]:
        return {"stopped": await cluster.apps.stop(body.ref)}

    # --- allocations ------------------------------------------------------------------
    @r.get("/v1/allocations", response_model=list[AllocationView])  # type: ignore[valid-type]
    async def list_allocations(
        app: str | None = None,
        workload: str | None = None,
        node: str | None = None,
        all: bool = Query(False, description="include stopped and lost allocations"),
    ) -> Response:
        where = AllocFilter(app, workload, node, all)
        return JSONResponse([alloc_view(a) for a in await views.allocations(where)])

    @r.get("/v1/allocations/{alloc_id}", response_model=AllocationView)
    async def get_allocation(alloc_id: str) -> Response:
        return JSONResponse(alloc_view(await views.allocation(alloc_id)))

    @r.post(
        "/v1/allocations/{alloc_id}/resize",
        response_model=Resized,
        responses={
            409: {"model": ErrorBody, "description": "not running, or no node has room"},
            422: {"model": ErrorBody, "description": "cpu or memory is not a valid request"},
        },
    )
    async def resize_allocation(alloc_id: str, body: ResizeBody) -> dict[str, Any]:
        try:
            want = Resources.parse(cpu=body.cpu, memory=body.memory)
        except UnitError as e:
            raise Invalid(str(e), hint='e.g. {"cpu": "500m", "memory": "128Mi"}') from None
        return await cluster.vertical.resize(alloc_id, want)

    @r.get("/v1/recommendations")
    async def recommendations(
        service: str = Query("", description="a service: name or app/name (default: all)"),
    ) -> dict[str, Any]:
        """Per service: the vertical mode, the recommendation (target, lower and upper
        bounds, why), the spec's request and each running instance's request and use."""
        return {"services": await cluster.vertical.recommendations(service)}

    @r.get(
        "/v1/allocations/{alloc_id}/logs",
        response_class=StreamingResponse,
        responses={
            200: {"content": {"text/plain": {}}, "description": "the log's lines"},
            502: {"model": ErrorBody, "description": "the node's agent answered badly"},
            503: {"model": ErrorBody, "description": "the node's agent cannot be reached"},
        },
    )
    async def alloc_logs(
        alloc_id: str,
        stream: str = "stdout",
        tail: int = Query(100, ge=0, le=MAX_TAIL, description="lines (0: the whole log)"),
        follow: bool = False,
        since: str = Query(
            "",
            pattern=SINCE,
            description="only lines from this time on: RFC 3339 (2024-05-01T12:00:00Z) or a "
            "duration back from now (90s, 10m, 1h30m)",
        ),
        timestamps: bool = Query(False, description="each line's time in front of it"),
    ) -> Response:
        if stream not in ("stdout", "stderr"):
            raise Invalid(f"stream must be stdout or stderr, not {stream!r}")
        alloc = await views.allocation(alloc_id)
        if not alloc.node_id:
            raise NotFound(
                f"no logs for {alloc.name}: it is on no node",
                hint="it may not have been placed yet; see `elastin ps -a`",
            )
        node = await views.node(alloc.node_id)
        params: dict[str, str | int | bool] = {"stream": stream, "tail": tail, "follow": follow}
        if since:
            params["since"] = since
        if timestamps:
            params["timestamps"] = True
        relay = await open_relay(node, f"/v1/allocations/{alloc.id}/logs", params, token)
        return RelayResponse(relay)

    @r.post(
        "/v1/allocations/{alloc_id}/exec",
        response_class=StreamingResponse,
        responses={
            200: {
                "content": {"application/x-ndjson": {}},
                "description": 'one JSON object a line: {"stream": "stdout"|"stderr", "data": '
                '<base64>} as the command writes, then {"exit_code", "signal", "timed_out"}',
            },
            409: {"model": ErrorBody, "description": "the instance is not running"},
            502: {"model": ErrorBody, "description": "the node's agent answered badly"},
            503: {"model": ErrorBody, "description": "the node's agent cannot be reached"},
        },
    )
    async def alloc_exec(alloc_id: str, body: ExecBody) -> Response:
        alloc = await views.allocation(alloc_id)
        if alloc.status != "running" or not alloc.node_id:
            raise Conflict(
                f"{alloc.label} is {alloc.status}, not running: nothing to run a command in",
                hint="see `elastin ps` (and `elastin logs` for why it is not running)",
            )
        node = await views.node(alloc.node_id)
        relay = await open_relay(
            node,
            f"/v1/allocations/{alloc.id}/exec",
            {},
            token,
            body={"command": body.command, "timeout": body.timeout},
        )
        return RelayResponse(relay, media_type="application/x-ndjson")

    # --- nodes ------------------------------------------------------------------------
    @r.get("/v1/nodes", response_model=list[NodeView])  # type: ignore[valid-type]
    async def list_nodes() -> Response:
        out = []
        for n, usage in await views.nodes():
            d: dict[str, Any] = to_data(n)
            d["usage"] = to_data(usage)
            out.append(d)
        return JSONResponse(out)

    @r.get("/v1/nodes/{node_id}", response_model=NodeView)
    async def get_node(node_id: str) -> dict[str, Any]:
        out: dict[str, Any] = to_data(await views.node(node_id))
        return out

    # --- the mesh ---------------------------------------------------------------------
    @r.get("/v1/mesh/services", response_model=Registry)
    async def mesh_services(
        index: int = 0, wait: float = Query(0.0, le=300), service: str = ""
    ) -> dict[str, Any]:
        version, entries = await cluster.mesh.registry(index, wait)
        found = find_service(entries, service) if service else list(entries)
        if service and not found:
            raise NotFound(
                f"no service {service!r} in the registry",
                hint="name it as `service` or `app/service`; see `elastin endpoints`",
            )
        return {"index": version, "services": [to_data(e) for e in found]}

    @r.get("/v1/mesh/traffic", response_model=Traffic)
    async def mesh_traffic() -> dict[str, Any]:
        return {"services": cluster.telemetry.traffic()}

    @r.get("/v1/metrics/services/{app}/{service}", response_model=ServiceMetrics)
    async def service_metrics(
        app: str, service: str, seconds: int = Query(60, ge=1, le=WINDOW_SECONDS)
    ) -> Response:
        await cluster.apps.find_workload(f"{app}/{service}")  # 404 naming what is missing
        return JSONResponse(cluster.telemetry.windows.service(app, service, seconds))

    # --- events, watch, reports -------------------------------------------------------
    @r.get("/v1/events", response_model=list[Event])
    async def events(
        since: int = 0,
        limit: int = 200,
        service: str | None = Query(
            None,
            description="only events about this service or job (`name` or `app/name`): "
            "its own and its instances'",
        ),
    ) -> Response:
        if not service:
            return JSONResponse([to_data(e) for e in await views.events(since, limit)])
        found = [e for e in await views.events(since, 0) if event_of(e.subject, service)]
        return JSONResponse([to_data(e) for e in (found[-limit:] if limit else found)])

    @r.get(
        "/v1/watch",
        response_class=StreamingResponse,
        responses={
            200: {
                "content": {"application/x-ndjson": {}},
                "description": 'one JSON object per change: {"rev", "type", "key", "value"}; '
                '{"error": "Compacted"} when `from_rev` is older than the history kept',
            }
        },
    )
    async def watch(from_rev: int = 0, prefix: str = "/") -> Response:
        async def lines() -> AsyncIterator[bytes]:
            try:
                async for ev in views.watch(prefix, from_rev):
                    yield (
                        json.dumps(
                            {"rev": ev.rev, "type": ev.type, "key": ev.key, "value": ev.value}
                        ).encode()
                        + b"\n"
                    )
            except CompactedError as e:
                yield json.dumps({"error": "Compacted", "message": str(e)}).encode() + b"\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @r.get("/v1/resources", response_model=ResourceReport)
    async def resources() -> dict[str, Any]:
        return await views.resources()

    @r.get("/v1/status", response_model=ServerStatus)
    async def status() -> dict[str, Any]:
        return {
            "version": __version__,
            "revision": await views.revision(),
            "data_dir": str(data_dir),
            "pid": os.getpid(),
        }

    @r.get(
        "/v1/metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text"}},
    )
    async def metrics() -> Response:
        allocs, rev = await views.all_allocations()
        t = cluster.telemetry
        body = render_metrics(
            rev, allocs, t.usage(), t.mesh(), store_counters(cluster.applier.store)
        )
        return Response(body, media_type=CONTENT_TYPE)

    return r
