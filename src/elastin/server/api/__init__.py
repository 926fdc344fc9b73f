"""The REST API under ``/v1`` (FastAPI; the OpenAPI document is ``/v1/openapi.json`` and
describes every request and response body, ``models.py``).

Handlers only translate between HTTP and the cluster's rooms (``elastin.server.cluster``).
Every request needs the server's bearer token (``elastin.auth.RequireToken``), the OpenAPI
document included. Logs are relayed from the node's agent API (``server/relay.py``): the
server never opens a file on a node. Errors are JSON bodies ``{"error", "message", "hint",
"issues"}`` with a 4xx or 5xx status; a rejected spec returns the same located messages the
CLI prints.

Routes for users (``users.py``)::

    POST   /v1/apps                     apply a spec (``dry_run`` gives the diff only)
    GET    /v1/apps                     list applications
    GET    /v1/apps/{name}              one application as applied
    GET    /v1/apps/{name}/settlement[?index=&wait=]  settling, settled or failed (blocking)
    DELETE /v1/apps/{name}              delete it (its instances stop)
    GET    /v1/services                 services and jobs with desired and running counts
    GET    /v1/services/{ref}           one (``name`` or ``app/name``) with its allocations
    POST   /v1/scale/{ref}              set replicas
    POST   /v1/stop                     stop one workload (``ref``) or all
    GET    /v1/allocations[?app=&workload=&node=&all=]   allocations (live ones by default)
    GET    /v1/allocations/{id}
    GET    /v1/allocations/{id}/logs    stdout/stderr (``stream``, ``tail``, ``follow``)
    GET    /v1/nodes, /v1/nodes/{id}
    GET    /v1/events[?since=&limit=]
    GET    /v1/watch?from_rev=&prefix=  NDJSON stream of every change from a revision
    GET    /v1/resources                the accounting report (per kind, node, cluster)
    GET    /v1/status                   server version, revision, data directory
    GET    /v1/metrics                  Prometheus text
    GET    /v1/mesh/traffic             requests, errors, retries per service (all proxies)
    GET    /v1/mesh/services[?service=&index=&wait=]  the service registry (blocking)

Routes for agents (``agents.py``)::

    POST   /v1/nodes                    register a node
    POST   /v1/nodes/{id}/heartbeat     liveness and measured usage
    GET    /v1/nodes/{id}/allocations?index=&wait=   blocking query for a node's allocations
    GET    /v1/nodes/{id}/mesh?index=&wait=          blocking query for a node's mesh snapshot
    GET    /v1/nodes/{id}/mesh/stream               the node's mesh snapshots as they change
    POST   /v1/nodes/{id}/mesh/ack?version=         the node's proxy serves that version
    GET    /v1/nodes/{id}/mesh/logs?tail=&follow=    the node's HAProxy access log
    GET    /v1/mesh/converged?version=&wait=         wait until every live proxy serves a
                                                     mesh version (agents drain with it)
    POST   /v1/allocations/{id}/status  an agent's report on one allocation
    POST   /v1/allocations/status       several reports at once
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from elastin import __version__
from elastin.auth import RequireToken
from elastin.model.errors import ModelError
from elastin.server.api.agents import agent_routes
from elastin.server.api.middleware import MeshStreams
from elastin.server.api.rollouts import rollout_routes
from elastin.server.api.users import user_routes
from elastin.server.auth import token_hint
from elastin.server.cluster import Cluster
from elastin.server.errors import ServerError, from_store_error
from elastin.serving import json_error
from elastin.store import StoreError


def create_api(cluster: Cluster, token: str, data_dir: Path) -> FastAPI:
    api = FastAPI(
        title="Elastin",
        version=__version__,
        openapi_url="/v1/openapi.json",
        docs_url=None,
        redoc_url=None,
    )
    api.add_middleware(MeshStreams, feed=cluster.mesh)  # added first: inside the token check
    api.add_middleware(
        RequireToken,
        token=token,
        message="this call needs the server's token",
        hint=token_hint(data_dir),
    )

    @api.exception_handler(ServerError)
    async def server_error(_: Request, exc: ServerError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @api.exception_handler(StoreError)
    async def store_error(_: Request, exc: StoreError) -> JSONResponse:
        err = from_store_error(exc)
        return JSONResponse(err.body(), status_code=err.status)

    @api.exception_handler(RequestValidationError)
    async def request_invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own {"detail": [...]}, said as every other error of this API is
        issues = []
        for err in exc.errors():
            where = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            issues.append({"path": where, "message": str(err.get("msg", ""))})
        message = "; ".join(f"{i['path']}: {i['message']}" for i in issues) or "invalid request"
        # no "issues": those are a spec's located problems (file, line, column)
        return json_error(422, "Invalid", message, "see /v1/openapi.json for what this call takes")

    @api.exception_handler(ModelError)
    async def model_error(_: Request, exc: ModelError) -> JSONResponse:
        return json_error(422, "Invalid", str(exc))

    # The routes go on the app itself, agents' first (they are the busiest): an included
    # router matches through a wrapper per request, which cost a fifth of the server's time
    # with 1,000 agents polling (bench/propagation.py --modes poll).
    routers = (
        agent_routes(cluster, token),
        user_routes(cluster, token, data_dir),
        rollout_routes(cluster),
    )
    for router in routers:
        api.router.routes.extend(router.routes)
    return api
