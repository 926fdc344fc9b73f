"""HTTP clients of the ``/v1`` API: ``Client`` (synchronous: CLI, SDK) and ``AsyncClient``
(asyncio: the agent). Both send the bearer token and turn error bodies into ``ApiError``
with the server's message and hint, and connection failures into ``ServerUnavailable``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

from elastin.client.errors import ApiError, ServerUnavailable
from elastin.mesh.model import MeshSnapshot
from elastin.mesh.model.build import localize
from elastin.mesh.model.traffic import ClusterStats
from elastin.model.cluster import Allocation, Node, Usage
from elastin.model.codec import from_data, to_data
from elastin.model.errors import ModelError

log = logging.getLogger("elastin.client")


def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        body = resp.json()
    except ValueError:
        body = {"message": resp.text or resp.reason_phrase}
    if not isinstance(body, dict):
        body = {"message": str(body)}
    message = body.get("message")
    if message is None:  # FastAPI's own validation errors
        detail = body.get("detail", resp.reason_phrase)
        message = f"the server rejected the request: {detail}"
    raise ApiError(resp.status_code, str(message), str(body.get("hint", "")), body.get("issues"))


def _unavailable(url: str, e: Exception) -> ServerUnavailable:
    return ServerUnavailable(
        f"cannot reach the Elastin server at {url}: {e}",
        hint="is it running? `elastin up FILE` starts one; `elastin status` checks",
    )


class Client:
    """Synchronous client; every method is one API call. ``transport`` replaces the network
    (tests pass an ``httpx.MockTransport``)."""

    def __init__(
        self,
        url: str,
        token: str,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            transport=transport,
        )

    @classmethod
    def discover(cls) -> Client:
        from elastin.client.discovery import find_server

        return cls(*find_server())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            resp = self._http.request(method, path, **kw)
        except httpx.TransportError as e:
            raise _unavailable(self.url, e) from None
        _raise_for(resp)
        return resp.json()

    # applications
    def apply(self, spec: str, *, file: str = "", base_dir: str = "", dry_run: bool = False) -> Any:
        body = {"spec": spec, "file": file, "base_dir": base_dir, "dry_run": dry_run}
        return self.call("POST", "/v1/apps", json=body)

    def apps(self) -> Any:
        return self.call("GET", "/v1/apps")

    def delete_app(self, name: str) -> Any:
        return self.call("DELETE", f"/v1/apps/{name}")

    def settlement(self, app: str, index: int = 0, wait: float = 0.0, generation: int = 0) -> Any:
        """Where ``app`` stands (``elastin.model.settled``): ``state`` settling, settled or
        failed, per workload, ``waiting``, ``summary`` and the ``index`` to wait past; blocks
        up to ``wait`` s for a change past ``index``."""
        params: dict[str, Any] = {"index": index, "wait": wait, "generation": generation}
        return self.call("GET", f"/v1/apps/{app}/settlement", params=params, timeout=wait + 30.0)

    def services(self) -> Any:
        return self.call("GET", "/v1/services")

    def service(self, ref: str) -> Any:
        return self.call("GET", f"/v1/services/{ref}")

    def scale(self, ref: str, replicas: int) -> Any:
        return self.call("POST", f"/v1/scale/{ref}", json={"replicas": replicas})

    def stop(self, ref: str | None = None) -> Any:
        return self.call("POST", "/v1/stop", json={"ref": ref})

    # versions: rollouts, restart, job runs
    def rollout(self, ref: str) -> Any:
        """A workload's current version, its rollout and the versions kept."""
        return self.call("GET", f"/v1/rollouts/{ref}")

    def rollout_undo(self, ref: str, to: int = 0) -> Any:
        return self.call("POST", f"/v1/rollouts/{ref}/undo", json={"to": to})

    def rollout_promote(self, ref: str) -> Any:
        return self.call("POST", f"/v1/rollouts/{ref}/promote")

    def restart(self, ref: str) -> Any:
        return self.call("POST", f"/v1/restart/{ref}")

    def job_run(self, ref: str) -> Any:
        return self.call("POST", f"/v1/jobs/{ref}/run")

    # allocations, nodes, events
    def allocations(
        self, *, app: str | None = None, workload: str | None = None, all: bool = False
    ) -> list[Allocation]:
        params: dict[str, Any] = {"all": all}
        if app:
            params["app"] = app
        if workload:
            params["workload"] = workload
        return [
            from_data(Allocation, a) for a in self.call("GET", "/v1/allocations", params=params)
        ]

    def logs(
        self,
        alloc_id: str,
        *,
        stream: str = "stdout",
        tail: int = 100,
        follow: bool = False,
        since: str = "",
        timestamps: bool = False,
    ) -> Iterator[bytes]:
        """An instance's output: the last ``tail`` lines (0: all), only those from ``since``
        on (RFC 3339 or a duration back from now: ``10m``), each after its time with
        ``timestamps``; then, with ``follow``, what it writes."""
        params: dict[str, str | int | bool] = {"stream": stream, "tail": tail, "follow": follow}
        if since:
            params["since"] = since
        if timestamps:
            params["timestamps"] = True
        yield from self._stream(f"/v1/allocations/{alloc_id}/logs", params)

    def exec(self, alloc_id: str, command: list[str], timeout: float = 30.0) -> Iterator[Any]:
        """Run ``command`` (an argv) inside a running instance: its answer's frames, as they
        come: ``{"stream": "stdout"|"stderr", "data": <base64>}``, then (last) ``{"exit_code",
        "signal", "timed_out"}``."""
        body = {"command": command, "timeout": timeout}
        buf = b""
        for chunk in self._stream(f"/v1/allocations/{alloc_id}/exec", {}, json=body):
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line.strip():
                    yield json.loads(line)

    def _stream(
        self, path: str, params: dict[str, str | int | bool], json: Any = None
    ) -> Iterator[bytes]:
        method = "GET" if json is None else "POST"
        try:
            with self._http.stream(method, path, params=params, json=json, timeout=None) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    _raise_for(resp)
                yield from resp.iter_bytes()
        except httpx.TransportError as e:
            raise _unavailable(self.url, e) from None

    def mesh_logs(self, node_id: str, *, tail: int = 100, follow: bool = False) -> Iterator[bytes]:
        yield from self._stream(f"/v1/nodes/{node_id}/mesh/logs", {"tail": tail, "follow": follow})

    def mesh_services(self, service: str = "", index: int = 0, wait: float = 0.0) -> Any:
        """The service registry (``{"index", "services"}``); with ``index`` a blocking query."""
        params: dict[str, Any] = {"service": service, "index": index, "wait": wait}
        return self.call("GET", "/v1/mesh/services", params=params, timeout=wait + 30)

    def metrics(self) -> str:
        """The server's Prometheus text (``/v1/metrics``)."""
        try:
            resp = self._http.get("/v1/metrics")
        except httpx.TransportError as e:
            raise _unavailable(self.url, e) from None
        _raise_for(resp)
        return resp.text

    def service_metrics(self, app: str, service: str, seconds: int = 60) -> Any:
        """One service's live metrics (``GET /v1/metrics/services/{app}/{service}``): per
        metric the current value and the last ``seconds`` (one a second), in total, per
        port and per replica; see docs/api.md."""
        return self.call(
            "GET", f"/v1/metrics/services/{app}/{service}", params={"seconds": seconds}
        )

    def resize(self, alloc_id: str, cpu: str | int | float, memory: str | int) -> Any:
        """New cpu and memory for one running instance (``POST
        /v1/allocations/{id}/resize``): applied in place when its node has room, else it
        moves; ``{"action": "in_place" | "moved", ...}``."""
        return self.call(
            "POST", f"/v1/allocations/{alloc_id}/resize", json={"cpu": cpu, "memory": memory}
        )

    def recommendations(self, service: str = "") -> Any:
        """The vertical recommendations beside each service's request and use (``GET
        /v1/recommendations``)."""
        return self.call("GET", "/v1/recommendations", params={"service": service})

    def nodes(self) -> Any:
        return self.call("GET", "/v1/nodes")

    def events(self, since: int = 0, limit: int = 200, service: str = "") -> Any:
        """Events, oldest first, from revision ``since``; only those about ``service``
        (``name`` or ``app/name``) and its instances when given."""
        params: dict[str, Any] = {"since": since, "limit": limit}
        if service:
            params["service"] = service
        return self.call("GET", "/v1/events", params=params)

    def resources(self) -> Any:
        return self.call("GET", "/v1/resources")

    def status(self) -> Any:
        return self.call("GET", "/v1/status")


class AsyncClient:
    """Asynchronous client with the calls an agent makes (``transport``: as ``Client``'s)."""

    def __init__(
        self,
        url: str,
        token: str,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            transport=transport,
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def call(self, method: str, path: str, timeout: float | None = None, **kw: Any) -> Any:
        try:
            if timeout is not None:
                kw["timeout"] = timeout
            resp = await self._http.request(method, path, **kw)
        except httpx.TransportError as e:
            raise _unavailable(self.url, e) from None
        _raise_for(resp)
        return resp.json()

    async def register(self, node: Node) -> Node:
        return from_data(Node, await self.call("POST", "/v1/nodes", json={"node": to_data(node)}))

    async def heartbeat(
        self,
        node_id: str,
        usage: dict[str, Usage],
        node_usage: Usage | None,
        mesh: dict[str, ClusterStats] | None = None,
    ) -> Any:
        body = {
            "usage": {k: to_data(v) for k, v in usage.items()},
            "node_usage": to_data(node_usage) if node_usage else None,
            "mesh": {k: to_data(v) for k, v in (mesh or {}).items()},
        }
        return await self.call("POST", f"/v1/nodes/{node_id}/heartbeat", json=body)

    async def node_allocations(
        self, node_id: str, index: int, wait: float
    ) -> tuple[list[Allocation], int]:
        data = await self.call(
            "GET",
            f"/v1/nodes/{node_id}/allocations",
            params={"index": index, "wait": wait},
            timeout=wait + 30,
        )
        allocs = []
        for a in data["allocations"]:
            try:
                allocs.append(from_data(Allocation, a))
            except ModelError as e:  # one the agent cannot read must not stop the others
                log.error(
                    "allocation %s from the server cannot be read (%s): skipped; is this "
                    "agent older than the server?",
                    a.get("id", "?") if isinstance(a, dict) else "?",
                    e,
                )
        return allocs, int(data["index"])

    async def alloc_status(self, alloc_id: str, **report: Any) -> Allocation:
        data = await self.call("POST", f"/v1/allocations/{alloc_id}/status", json=report)
        return from_data(Allocation, data)

    async def mesh_stream(self, node_id: str, quiet: float = 60.0) -> AsyncIterator[MeshSnapshot]:
        """The node's mesh snapshots as the server pushes them (the current one first).
        Ends with ``ServerUnavailable`` when the connection drops or stays silent for
        ``quiet`` s (the server sends a newline every 15 s)."""
        try:
            async with self._http.stream(
                "GET", f"/v1/nodes/{node_id}/mesh/stream", timeout=httpx.Timeout(10, read=quiet)
            ) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    _raise_for(resp)
                async for line in resp.aiter_lines():
                    if line.strip():
                        yield localize(from_data(MeshSnapshot, json.loads(line)))
        except httpx.TransportError as e:
            raise _unavailable(self.url, e) from None

    async def mesh_ack(self, node_id: str, version: int) -> None:
        await self.call("POST", f"/v1/nodes/{node_id}/mesh/ack", params={"version": version})

    async def mesh_wake(self, node_id: str, held: dict[str, int]) -> Any:
        """Requests this node's proxy holds for services scaled to zero (``{"<app>.<service>.
        <port>": held}``): the server starts a replica of each at once."""
        return await self.call(
            "POST", f"/v1/nodes/{node_id}/wake", json={"held": held}, timeout=10.0
        )

    async def mesh_converged(self, version: int, wait: float) -> list[str]:
        """Nodes whose proxies do not serve mesh ``version`` after ``wait`` s (empty: all do)."""
        data = await self.call(
            "GET",
            "/v1/mesh/converged",
            params={"version": version, "wait": wait},
            timeout=wait + 30,
        )
        return [str(n) for n in data["pending"]]

    async def allocs_status(self, reports: dict[str, dict[str, Any]]) -> dict[str, str]:
        data = await self.call("POST", "/v1/allocations/status", json={"reports": reports})
        return {str(k): str(v) for k, v in data["results"].items()}

    async def allocations(self, app: str) -> list[Allocation]:
        data = await self.call("GET", "/v1/allocations", params={"app": app, "all": False})
        return [from_data(Allocation, a) for a in data]

    async def node_metrics(self, node_id: str, report: dict[str, Any]) -> None:
        """The agent's metrics report (``elastin.agent.sampling``) into the server's memory."""
        await self.call("POST", f"/v1/nodes/{node_id}/metrics", json=report)

    async def service_metrics(self, app: str, service: str, seconds: int = 60) -> Any:
        """``Client.service_metrics``."""
        return await self.call(
            "GET", f"/v1/metrics/services/{app}/{service}", params={"seconds": seconds}
        )
