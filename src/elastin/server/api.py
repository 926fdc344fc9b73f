"""The REST API under ``/v1`` (FastAPI; the OpenAPI document is ``/v1/openapi.json``).

Handlers only translate between HTTP and ``Cluster`` (``core.py``). Every request needs the
server's bearer token (``auth.py``), the OpenAPI document included. Errors are JSON bodies
``{"error", "message", "hint", "issues"}`` with a 4xx status; a rejected spec returns the same
located messages the CLI prints.

Routes (users)::

    POST   /v1/apps                     apply a spec (``dry_run`` gives the diff only)
    GET    /v1/apps                     list applications
    GET    /v1/apps/{name}              one application as applied
    GET    /v1/apps/{name}/settlement[?index=&wait=]  settling, settled or failed (blocking)
    DELETE /v1/apps/{name}              delete it (its instances stop)
    GET    /v1/services                 services and jobs with desired and running counts
    GET    /v1/services/{ref}           one (``name`` or ``app/name``) with its allocations
    POST   /v1/services/{ref}/scale     set replicas
    POST   /v1/stop                     stop one workload (``ref``) or all
    GET    /v1/allocations[?app=&workload=&node=&all=]   allocations (live ones by default)
    GET    /v1/allocations/{id}
    GET    /v1/allocations/{id}/logs    stdout/stderr (``stream``, ``tail``, ``follow``)
    GET    /v1/nodes, /v1/nodes/{id}
    GET    /v1/events[?since=&limit=]
    GET    /v1/watch?from_rev=          NDJSON stream of every change from a revision
    GET    /v1/resources                the accounting report (per kind, node, cluster)
    GET    /v1/status                   server version, revision, data directory
    GET    /v1/metrics                  Prometheus text
    GET    /v1/mesh/traffic             requests, errors, retries per service (all nodes' proxies)
    GET    /v1/mesh/services[?service=&index=&wait=]  the service registry: every service port
                                        with its endpoints (a blocking query: a watch)

Routes (agents)::

    POST   /v1/nodes                    register a node
    POST   /v1/nodes/{id}/heartbeat     liveness and measured usage
    GET    /v1/nodes/{id}/allocations?index=&wait=   blocking query for a node's allocations
    GET    /v1/nodes/{id}/mesh?index=&wait=          blocking query for a node's mesh snapshot
    GET    /v1/nodes/{id}/mesh/stream               the node's mesh snapshots as they change
                                        (NDJSON, pushed; what agents use)
    POST   /v1/nodes/{id}/mesh/ack?version=         the node's proxy serves that version
    GET    /v1/nodes/{id}/mesh/logs?tail=&follow=    the node's HAProxy access log (JSON lines)
    GET    /v1/mesh/converged?version=&wait=         wait until every live proxy serves a mesh
                                        version (agents drain an instance with it)
    POST   /v1/allocations/{id}/status  an agent's report on one allocation
    POST   /v1/allocations/status       several reports at once
    POST   /v1/events                   events from agents
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from elastin import __version__
from elastin.mesh.haproxy.stats import ClusterStats, prometheus_lines
from elastin.mesh.model.registry import find_service
from elastin.model.cluster import Allocation, Node, Usage
from elastin.model.codec import from_data, to_data
from elastin.model.errors import ModelError
from elastin.server.auth import token_matches
from elastin.server.core import Cluster
from elastin.server.errors import Invalid, NotFound, ServerError
from elastin.store.base import CompactedError


class ApplyBody(BaseModel):
    spec: str = Field(description="the spec file's YAML text")
    file: str = Field("", description="file name, for error messages")
    base_dir: str = Field("", description="directory relative workdirs resolve against")
    dry_run: bool = Field(False, description="only compute the diff; change nothing")


class ScaleBody(BaseModel):
    replicas: int


class StopBody(BaseModel):
    ref: str | None = None


class NodeBody(BaseModel):
    node: dict[str, Any]


class HeartbeatBody(BaseModel):
    usage: dict[str, dict[str, Any]] = {}
    node_usage: dict[str, Any] | None = None
    mesh: dict[str, dict[str, Any]] = {}  # cluster -> its proxy counters on this node


class StatusBody(BaseModel):
    status: str | None = None
    reason: str | None = None
    exit_code: int | None = None
    restarts: int | None = None
    pid: int | None = None
    ports: list[tuple[str, int]] | None = None
    healthy: bool | None = None
    events: list[tuple[str, str, str, str]] = []


class BatchStatusBody(BaseModel):
    reports: dict[str, StatusBody]


class EventsBody(BaseModel):
    events: list[tuple[str, str, str, str]]


T = TypeVar("T")


def found_or_404(found: tuple[T, int] | None, message: str, hint: str) -> T:
    """The object of a ``(object, mod_rev)`` lookup, or a 404 saying what was missing."""
    if found is None:
        raise NotFound(message, hint=hint)
    return found[0]


def alloc_view(cluster: Cluster, a: Allocation) -> dict[str, Any]:
    d: dict[str, Any] = to_data(cluster.alloc_with_usage(a))
    d["name"] = a.name
    return d


class RequireToken:
    """Every call needs the server's bearer token. A plain ASGI middleware: Starlette's
    ``BaseHTTPMiddleware`` costs a task and a stream per request, which halved the API's
    throughput for agents' blocking queries."""

    def __init__(self, app: ASGIApp, token: str, data_dir: Path) -> None:
        self.app = app
        self.token = token
        self.denied = json.dumps(
            {
                "error": "Unauthorized",
                "message": "this call needs the server's token",
                "hint": f"send 'Authorization: Bearer <token>'; the token is in "
                f"{data_dir / 'token'} (readable by its owner only)",
            }
        ).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            header = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            if not token_matches(self.token, header.decode("latin-1")):
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(self.denied)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": self.denied})
                return
        await self.app(scope, receive, send)


STREAM_PATH = re.compile(r"^/v1/nodes/([^/]+)/mesh/stream$")


class MeshStreams:
    """The agents' mesh snapshot streams, served on plain ASGI in front of FastAPI.

    Every change writes to every agent's stream at once; through Starlette's
    ``StreamingResponse`` (a task group per stream, several wrappers per message) that was
    three quarters of the server's time with 1,000 agents (bench/propagation.py). It sits
    inside ``RequireToken``; anything else goes on to the app."""

    def __init__(self, app: ASGIApp, cluster: Cluster) -> None:
        self.app = app
        self.cluster = cluster

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = (
            STREAM_PATH.match(scope["path"])
            if scope["type"] == "http" and scope["method"] == "GET"
            else None
        )
        if found is None:
            await self.app(scope, receive, send)
            return
        start = {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/x-ndjson")],
        }
        await send(start)

        async def disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        gone = asyncio.ensure_future(disconnect())
        stream = self.cluster.mesh_stream(unquote(found[1]))
        try:
            async for chunk in stream:  # a bare newline at least every 15 s: gone is seen
                if gone.done():
                    return
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            gone.cancel()
            await stream.aclose()


def create_api(cluster: Cluster, token: str, data_dir: Path) -> FastAPI:
    api = FastAPI(
        title="Elastin",
        version=__version__,
        openapi_url="/v1/openapi.json",
        docs_url=None,
        redoc_url=None,
    )

    api.add_middleware(MeshStreams, cluster=cluster)  # added first: inside the token check
    api.add_middleware(RequireToken, token=token, data_dir=data_dir)

    @api.exception_handler(ServerError)
    async def server_error(_: Request, exc: ServerError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @api.exception_handler(ModelError)
    async def model_error(_: Request, exc: ModelError) -> JSONResponse:
        return JSONResponse({"error": "Invalid", "message": str(exc)}, status_code=422)

    # --- applications -----------------------------------------------------------------
    @api.post("/v1/apps")
    async def apply_app(body: ApplyBody) -> dict[str, Any]:
        res = await cluster.apply(
            body.spec, file=body.file, base_dir=body.base_dir, dry_run=body.dry_run
        )
        out: dict[str, Any] = to_data(res)
        out["changed"] = res.changed
        return out

    @api.get("/v1/apps")
    async def list_apps() -> list[dict[str, Any]]:
        return [to_data(r) for r in await cluster.repo.list_apps()]

    @api.get("/v1/apps/{name}")
    async def get_app(name: str) -> dict[str, Any]:
        rec = found_or_404(
            await cluster.repo.get_app(name), f"no application named {name!r}", "see `elastin ps`"
        )
        out: dict[str, Any] = to_data(rec)
        return out

    @api.get("/v1/apps/{name}/settlement")
    async def app_settlement(
        name: str, index: int = 0, wait: float = Query(0.0, le=300)
    ) -> dict[str, Any]:
        rev, s = await cluster.settlement(name, index, wait)
        out: dict[str, Any] = to_data(s)
        out.update(index=rev, summary=s.summary, done=s.done)
        return out

    @api.delete("/v1/apps/{name}")
    async def delete_app(name: str) -> dict[str, Any]:
        return {"deleted": name, "revision": await cluster.delete_app(name)}

    # --- services ---------------------------------------------------------------------
    async def services() -> list[dict[str, Any]]:
        allocs, _ = await cluster.repo.list_allocs()
        out = []
        for rec in await cluster.repo.list_apps():
            for w in rec.app.workloads:
                mine = [a for a in allocs if a.app == rec.app.name and a.workload == w.name]
                live = [a for a in mine if not a.terminal]
                out.append(
                    {
                        "app": rec.app.name,
                        "name": w.name,
                        "type": w.type,
                        "kind": w.kind,
                        "desired": 0 if w.name in rec.stopped else w.instances,
                        "stopped": w.name in rec.stopped,
                        "running": sum(1 for a in live if a.status == "running"),
                        "pending": sum(1 for a in live if a.status == "pending"),
                        "complete": sum(1 for a in mine if a.status == "complete"),
                        "failed": sum(1 for a in mine if a.status == "failed"),
                        "completions": w.completions if w.type == "job" else None,
                        "priority": w.priority,
                        "resources": to_data(w.resources),
                        "version": rec.versions.get(w.name, 0),
                    }
                )
        return out

    @api.get("/v1/services")
    async def list_services() -> list[dict[str, Any]]:
        return await services()

    @api.get("/v1/services/{ref:path}")
    async def get_service(ref: str) -> dict[str, Any]:
        rec, _, w = await cluster.find_workload(ref)
        allocs, _ = await cluster.repo.list_allocs()
        return {
            "app": rec.app.name,
            "workload": to_data(w),
            "allocations": [
                alloc_view(cluster, a)
                for a in allocs
                if a.app == rec.app.name and a.workload == w.name
            ],
        }

    @api.post("/v1/scale/{ref:path}")
    async def scale(ref: str, body: ScaleBody) -> dict[str, Any]:
        rec = await cluster.scale(ref, body.replicas)
        return {"app": rec.app.name, "generation": rec.generation}

    @api.post("/v1/stop")
    async def stop(body: StopBody) -> dict[str, Any]:
        return {"stopped": await cluster.stop(body.ref)}

    # --- allocations ------------------------------------------------------------------
    @api.get("/v1/allocations")
    async def list_allocations(
        app: str | None = None,
        workload: str | None = None,
        node: str | None = None,
        all: bool = Query(False, description="include finished allocations"),
    ) -> list[dict[str, Any]]:
        allocs, _ = await cluster.repo.list_allocs()
        out = []
        for a in allocs:
            if app and a.app != app:
                continue
            if workload and a.workload != workload:
                continue
            if node and a.node_id != node:
                continue
            if not all and a.terminal and a.status not in ("failed", "complete"):
                continue
            out.append(alloc_view(cluster, a))
        return out

    @api.get("/v1/allocations/{alloc_id}")
    async def get_allocation(alloc_id: str) -> dict[str, Any]:
        alloc = found_or_404(
            await cluster.repo.get_alloc(alloc_id),
            f"no allocation {alloc_id!r}",
            "see `elastin ps`",
        )
        return alloc_view(cluster, alloc)

    @api.get("/v1/allocations/{alloc_id}/logs", response_model=None)
    async def alloc_logs(
        alloc_id: str, stream: str = "stdout", tail: int = 100, follow: bool = False
    ) -> Response:
        if stream not in ("stdout", "stderr"):
            raise Invalid(f"stream must be stdout or stderr, not {stream!r}")
        alloc = found_or_404(
            await cluster.repo.get_alloc(alloc_id),
            f"no allocation {alloc_id!r}",
            "see `elastin ps`",
        )
        node = await cluster.repo.get_node(alloc.node_id) if alloc.node_id else None
        root = dict(node[0].attributes).get("agent.alloc_root", "") if node else ""
        path = Path(root) / alloc_id / "logs" / f"{stream}.log" if root else None
        if path is None or not path.parent.exists():
            raise NotFound(
                f"no logs for {alloc.name} on this machine",
                hint="logs stay on the node that ran the instance; it may not have started yet",
            )
        return StreamingResponse(_read_logs(path, tail, follow), media_type="text/plain")

    # --- nodes (users and agents) -----------------------------------------------------
    @api.get("/v1/nodes")
    async def list_nodes() -> list[dict[str, Any]]:
        out = []
        for n in await cluster.repo.list_nodes():
            d: dict[str, Any] = to_data(n)
            d["usage"] = to_data(cluster.node_usage.get(n.id, Usage()))
            out.append(d)
        return out

    @api.get("/v1/nodes/{node_id}")
    async def get_node(node_id: str) -> dict[str, Any]:
        node = found_or_404(
            await cluster.repo.get_node(node_id), f"no node {node_id!r}", "see `elastin nodes`"
        )
        out: dict[str, Any] = to_data(node)
        return out

    @api.post("/v1/nodes")
    async def register_node(body: NodeBody) -> dict[str, Any]:
        node = await cluster.register_node(from_data(Node, body.node))
        out: dict[str, Any] = to_data(node)
        return out

    @api.post("/v1/nodes/{node_id}/heartbeat")
    async def heartbeat(node_id: str, body: HeartbeatBody) -> dict[str, Any]:
        usage = {k: from_data(Usage, v) for k, v in body.usage.items()}
        nu = from_data(Usage, body.node_usage) if body.node_usage else None
        mesh = {k: from_data(ClusterStats, v) for k, v in body.mesh.items()}
        node = await cluster.heartbeat(node_id, usage, nu, mesh)
        return {"status": node.status}

    @api.get("/v1/nodes/{node_id}/allocations")
    async def node_allocations(
        node_id: str, index: int = 0, wait: float = Query(0.0, le=300)
    ) -> dict[str, Any]:
        allocs, rev = await cluster.node_allocations(node_id, index, wait)
        return {"index": rev, "allocations": [to_data(a) for a in allocs]}

    @api.get("/v1/nodes/{node_id}/mesh", response_model=None)
    async def node_mesh(node_id: str, index: int = 0, wait: float = Query(0.0, le=300)) -> Response:
        # encoded by the cluster, once per version for what every node shares: every
        # agent's query wakes on each change
        body = await cluster.mesh_snapshot_json(node_id, index, wait)
        return Response(body, media_type="application/json")

    @api.get("/v1/mesh/services")
    async def mesh_services(
        index: int = 0, wait: float = Query(0.0, le=300), service: str = ""
    ) -> dict[str, Any]:
        version, entries = await cluster.service_registry(index, wait)
        found = find_service(entries, service) if service else list(entries)
        if service and not found:
            raise NotFound(
                f"no service {service!r} in the registry",
                hint="name it as `service` or `app/service`; see `elastin endpoints`",
            )
        return {"index": version, "services": [to_data(e) for e in found]}

    @api.get("/v1/mesh/traffic")
    async def mesh_traffic() -> dict[str, Any]:
        return {"services": cluster.mesh_traffic()}

    @api.get("/v1/mesh/converged")
    async def mesh_converged(version: int, wait: float = Query(0.0, le=60)) -> dict[str, Any]:
        pending = await cluster.mesh_converged(version, wait)
        return {"version": version, "converged": not pending, "pending": pending}

    @api.get("/v1/nodes/{node_id}/mesh/stream", response_model=None)
    async def node_mesh_stream(node_id: str) -> StreamingResponse:
        return StreamingResponse(cluster.mesh_stream(node_id), media_type="application/x-ndjson")

    @api.post("/v1/nodes/{node_id}/mesh/ack")
    async def node_mesh_ack(node_id: str, version: int) -> dict[str, Any]:
        await cluster.mesh_ack(node_id, version)
        return {"version": version}

    @api.get("/v1/nodes/{node_id}/mesh/logs", response_model=None)
    async def node_mesh_logs(node_id: str, tail: int = 100, follow: bool = False) -> Response:
        node = found_or_404(
            await cluster.repo.get_node(node_id), f"no node {node_id!r}", "see `elastin nodes`"
        )
        mesh_dir = dict(node.attributes).get("agent.mesh_dir", "")
        path = Path(mesh_dir) / "haproxy.log" if mesh_dir else None
        if path is None or not path.exists():
            raise NotFound(
                f"no mesh access log on node {node.name}",
                hint="the node's HAProxy starts when an instance there has upstreams",
            )
        return StreamingResponse(_read_logs(path, tail, follow), media_type="text/plain")

    @api.post("/v1/allocations/{alloc_id}/status")
    async def alloc_status(alloc_id: str, body: StatusBody) -> dict[str, Any]:
        report = {k: v for k, v in body.model_dump().items() if v is not None}
        alloc = await cluster.update_alloc(alloc_id, report)
        return alloc_view(cluster, alloc)

    @api.post("/v1/allocations/status")
    async def allocs_status(body: BatchStatusBody) -> dict[str, Any]:
        reports = {
            k: {f: x for f, x in v.model_dump().items() if x is not None}
            for k, v in body.reports.items()
        }
        return {"results": await cluster.update_allocs(reports)}

    @api.post("/v1/events")
    async def post_events(body: EventsBody) -> dict[str, Any]:
        await cluster.record_events(body.events)
        return {"recorded": len(body.events)}

    # --- events, watch, reports -------------------------------------------------------
    @api.get("/v1/events")
    async def events(since: int = 0, limit: int = 200) -> list[dict[str, Any]]:
        return [to_data(e) for e in await cluster.repo.list_events(since, limit)]

    @api.get("/v1/watch", response_model=None)
    async def watch(from_rev: int = 0, prefix: str = "/") -> Response:
        if from_rev == 0:
            from_rev = await cluster.store.revision() + 1
        it = cluster.store.watch(prefix, from_rev)

        async def lines() -> AsyncIterator[bytes]:
            try:
                async for ev in it:
                    yield (
                        json.dumps(
                            {"rev": ev.rev, "type": ev.type, "key": ev.key, "value": ev.value}
                        ).encode()
                        + b"\n"
                    )
            except CompactedError as e:
                yield json.dumps({"error": "Compacted", "message": str(e)}).encode() + b"\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @api.get("/v1/resources")
    async def resources() -> dict[str, Any]:
        return await cluster.resources()

    @api.get("/v1/status")
    async def status() -> dict[str, Any]:
        return {
            "version": __version__,
            "revision": await cluster.store.revision(),
            "data_dir": str(data_dir),
            "pid": os.getpid(),
        }

    @api.get("/v1/metrics", response_class=PlainTextResponse)
    async def metrics() -> str:
        allocs, rev = await cluster.repo.list_allocs()
        lines = [
            "# HELP elastin_store_revision Current revision of the state store.",
            "# TYPE elastin_store_revision gauge",
            f"elastin_store_revision {rev}",
            "# HELP elastin_allocations Allocations by status.",
            "# TYPE elastin_allocations gauge",
        ]
        counts: dict[str, int] = {}
        for a in allocs:
            counts[a.status] = counts.get(a.status, 0) + 1
        lines += [f'elastin_allocations{{status="{s}"}} {n}' for s, n in sorted(counts.items())]
        gauges: tuple[tuple[str, str, Callable[[Usage], str]], ...] = (
            ("cpu_millicores", "Measured cpu use.", lambda u: f"{u.cpu:.1f}"),
            ("memory_bytes", "Measured memory use (working set).", lambda u: str(u.memory)),
        )
        for name, help_, value in gauges:
            lines += [
                f"# HELP elastin_allocation_{name} {help_}",
                f"# TYPE elastin_allocation_{name} gauge",
            ]
            for a in allocs:
                u = cluster.usage.get(a.id)
                if u and not a.terminal:
                    lines.append(
                        f'elastin_allocation_{name}{{app="{a.app}",workload="{a.workload}",'
                        f'index="{a.index}"}} {value(u)}'
                    )
        lines += prometheus_lines(
            [(stats, {"node": n}) for n, stats in sorted(cluster.mesh_stats.items())]
        )
        return "\n".join(lines) + "\n"

    return api


async def _read_logs(path: Path, tail: int, follow: bool) -> AsyncIterator[bytes]:
    """The last ``tail`` lines of a log file, then (with ``follow``) what is appended."""
    try:
        data = path.read_bytes() if path.exists() else b""
    except OSError:
        data = b""
    lines = data.splitlines(keepends=True)
    yield b"".join(lines[-tail:] if tail > 0 else lines)
    if not follow:
        return
    pos = len(data)
    for _ in range(24 * 3600 * 4):  # bounded: a day of following
        await asyncio.sleep(0.25)
        try:
            size = path.stat().st_size
        except OSError:
            continue
        if size < pos:  # rotated (copy-truncate): start again from the top
            pos = 0
        if size > pos:
            with path.open("rb") as f:
                f.seek(pos)
                chunk = f.read(size - pos)
            pos = size
            yield chunk
