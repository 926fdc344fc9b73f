"""The agent's API for real on 127.0.0.1: an instance's timestamped log read ``since`` a time,
with or without its stamps, also while following; and ``exec``'s refusals (an allocation
that does not run here, one not running now, a shell string)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from elastin.agent.api import AgentApi, ExecTarget
from elastin.agent.logfiles import mark_stamped
from elastin.testing import FakeClock

pytestmark = pytest.mark.integration

TOKEN = "cluster-t0ken"
ALLOC = "ab12cd34ef56"
IDLE = "cd34ef56ab12"
LOG = (
    b"2024-05-01T11:59:00.000000Z one\n"
    b"2024-05-01T12:00:00.000000Z two\n"
    b"2024-05-01T12:00:30.000000Z three\n"
)
NOW = 1714564860.0  # 2024-05-01T12:01:00Z


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[AgentApi]:
    logs = tmp_path / "allocs" / ALLOC / "logs"
    logs.mkdir(parents=True)
    (logs / "stdout.log").write_bytes(LOG)
    mark_stamped(logs, True)  # as the task driver does when its node has the timestamper
    targets = {IDLE: ExecTarget("shop.api[1]", object(), None, {})}
    a = AgentApi(
        tmp_path / "allocs",
        tmp_path / "haproxy.log",
        TOKEN,
        exec_target=targets.get,
        clock=FakeClock(NOW),
    )
    await a.start()
    try:
        yield a
    finally:
        await a.close()


def client(api: AgentApi) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"http://{api.address}", headers={"authorization": f"Bearer {TOKEN}"}, timeout=10
    )


async def test_since_and_timestamps(api: AgentApi) -> None:
    async with client(api) as c:
        path = f"/v1/allocations/{ALLOC}/logs"
        assert (await c.get(path)).content == b"one\ntwo\nthree\n"
        got = await c.get(path, params={"since": "2024-05-01T12:00:00Z"})
        assert got.content == b"two\nthree\n"
        got = await c.get(path, params={"since": "45s", "timestamps": "true"})  # from 12:00:15
        assert got.content == LOG.splitlines(keepends=True)[2]
        got = await c.get(path, params={"since": "1h", "tail": 1})
        assert got.content == b"three\n"
        bad = await c.get(path, params={"since": "soon"})
        assert bad.status_code == 422 and "duration" in bad.json()["hint"]


async def test_since_while_following(api: AgentApi) -> None:
    path = api.alloc_root / ALLOC / "logs" / "stdout.log"
    params = {"since": "30s", "follow": "true", "tail": 0}
    async with (
        client(api) as c,
        c.stream("GET", f"/v1/allocations/{ALLOC}/logs", params=params) as resp,
    ):
        chunks = resp.aiter_raw()
        got = b""
        async with asyncio.timeout(10):
            while b"three\n" not in got:
                got += await anext(chunks)
            with open(path, "ab") as w:
                w.write(b"2024-05-01T12:00:59.000000Z four\n")
            while b"four\n" not in got:
                got += await anext(chunks)
    assert got == b"three\nfour\n"


async def test_exec_refusals(api: AgentApi) -> None:
    async with client(api) as c:
        body = {"command": ["true"]}
        gone = await c.post("/v1/allocations/ef56ab12cd34/exec", json=body)
        assert gone.status_code == 404 and "does not run on this node" in gone.json()["message"]
        idle = await c.post(f"/v1/allocations/{IDLE}/exec", json=body)
        assert idle.status_code == 409
        assert idle.json()["message"] == "shop.api[1] is not running now"
        shell = await c.post(f"/v1/allocations/{IDLE}/exec", json={"command": "ls -l"})
        assert shell.status_code == 422 and "list of strings" in shell.json()["message"]
