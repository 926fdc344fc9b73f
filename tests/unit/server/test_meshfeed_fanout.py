"""The mesh feed's fan-out: a stream given a ``push`` gets every newer version written by the
feed (its own generator stays asleep), each version once and in order, the same bytes the
blocking query answers; a push that says no (the client is not reading) hands the newest
version back to the stream, which sends it itself. In-memory store, fake pushes."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator

import pytest

from elastin.model.cluster import Node
from elastin.model.resources import Resources
from elastin.server.cluster import Cluster
from elastin.server.reports import AllocReport
from elastin.store.memory import MemoryStore
from elastin.testing import FakeClock

SPEC = """
app: shop
services:
  api:
    command: ["true"]
    ports: {http: 8080}
    replicas: 2
    resources: {cpu: 100m, memory: 16Mi}
  web:
    command: ["true"]
    upstreams: [api]
    resources: {cpu: 100m, memory: 16Mi}
"""


@pytest.fixture
async def cluster() -> Cluster:
    c = await Cluster.open(MemoryStore(), seed=1, clock=FakeClock())
    await c.nodes.register(Node("n1", "n1", capacity=Resources(4000, 8 << 30, 100 << 30)))
    await c.apps.apply(SPEC)
    await c.applier.schedule_once()
    allocs, _ = await c.views.all_allocations()
    for a in allocs:
        ports = (("http", 9000 + a.index),) if a.workload == "api" else (("upstream.api", 7000),)
        for status in ("starting", "running"):
            await c.reports.update(a.id, AllocReport(status=status, ports=ports, healthy=True))
    return c


async def flip(cluster: Cluster, ready: bool) -> int:
    """One endpoint's readiness changes (a new mesh version); the version."""
    allocs, _ = await cluster.views.all_allocations()
    api = next(a for a in allocs if a.workload == "api")
    await cluster.reports.update(api.id, AllocReport(healthy=ready))
    return cluster.changes.mesh.value


async def stop(nxt: asyncio.Task[bytes], stream: AsyncGenerator[bytes, None]) -> None:
    nxt.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await nxt
    await stream.aclose()


async def settle() -> None:
    for _ in range(20):  # the fan-out task's turn, and the read it awaits
        await asyncio.sleep(0)


def versions(lines: list[bytes]) -> list[int]:
    return [json.loads(line)["version"] for line in lines]


async def test_newer_versions_are_pushed_while_the_stream_sleeps(cluster: Cluster) -> None:
    pushed: list[bytes] = []

    def push(data: bytes) -> bool:
        pushed.append(data)
        return True

    stream: AsyncGenerator[bytes, None] = cluster.mesh.stream("n1", push=push)
    first = await anext(stream)  # the current snapshot: the stream sends it itself
    assert json.loads(first)["node"] == "n1"
    nxt: asyncio.Task[bytes] = asyncio.ensure_future(anext(stream))
    await settle()  # the stream waits for a newer version
    made = []
    for ready in (False, True):
        made.append(await flip(cluster, ready))
        await settle()
    assert not nxt.done()  # the generator did not wake for them: the feed wrote them
    assert all(p.endswith(b"\n") for p in pushed)
    assert versions(pushed) == made  # each once, in order
    # the same bytes the blocking query answers (the node's listeners included)
    assert pushed[-1] == await cluster.mesh.snapshot_json("n1", 0, 0) + b"\n"
    snap = json.loads(pushed[-1])
    assert snap["listeners"]  # web's upstream on n1
    # byte for byte as before the fan-out: json.dumps of the head, the clusters spliced in
    head = {k: snap[k] for k in ("version", "node", "listeners", "metrics_port", "ack_wanted")}
    clusters = json.dumps(snap["clusters"])
    assert pushed[-1] == (json.dumps(head)[:-1] + ', "clusters": ' + clusters + "}\n").encode()
    await stop(nxt, stream)


async def test_a_push_that_says_no_hands_the_newest_version_to_the_stream(
    cluster: Cluster,
) -> None:
    pushed: list[bytes] = []
    taking = False

    def push(data: bytes) -> bool:
        if taking:
            pushed.append(data)
        return taking

    stream: AsyncGenerator[bytes, None] = cluster.mesh.stream("n1", push=push)
    sent = [await anext(stream)]
    nxt = asyncio.ensure_future(anext(stream))
    await settle()
    await flip(cluster, False)
    sent.append(await asyncio.wait_for(nxt, 5))  # the client was not reading: sent the ASGI way
    taking = True
    nxt = asyncio.ensure_future(anext(stream))
    await settle()
    later = await flip(cluster, True)
    await settle()
    assert not nxt.done() and versions(pushed) == [later]  # reading again: pushed
    assert versions(sent + pushed) == sorted(set(versions(sent + pushed)))  # none twice
    await stop(nxt, stream)


async def test_streams_without_a_push_are_woken_for_each_version(cluster: Cluster) -> None:
    stream = cluster.mesh.stream("n1")
    first = json.loads(await anext(stream))["version"]
    nxt = asyncio.ensure_future(anext(stream))
    made = await flip(cluster, False)
    line = await asyncio.wait_for(nxt, 5)
    assert json.loads(line)["version"] == made > first
    await stream.aclose()


async def test_every_stream_ends_when_the_server_stops(cluster: Cluster) -> None:
    streams = [cluster.mesh.stream("n1", push=lambda _: True), cluster.mesh.stream("n2")]
    for s in streams:
        await anext(s)
    waiting = [asyncio.ensure_future(anext(s)) for s in streams]
    await settle()
    cluster.changes.close()
    for w in waiting:
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(w, 5)
