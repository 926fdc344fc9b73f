"""A writer SIGKILLed in the middle of its transactions leaves a consistent SQLite store."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from elastin.store import SqliteStore

pytestmark = pytest.mark.integration

WRITER = """
import asyncio, sys, time
from elastin.store import SqliteStore

async def main():
    s = SqliteStore(sys.argv[1])
    start = (await s.get("/a") or type("kv", (), {"value": 0})).value
    deadline = time.monotonic() + 20
    for i in range(start + 1, start + 100_000):
        await s.txn(puts=[("/a", i), ("/b", i)])
        if i == start + 50:
            print("writing", flush=True)
        if time.monotonic() > deadline:
            break

asyncio.run(main())
"""


def test_killed_writer_leaves_consistent_state(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"writing"
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

        async def check() -> None:
            s = SqliteStore(db)
            a, b = await s.get("/a"), await s.get("/b")
            assert a is not None and b is not None
            assert a.value == b.value and a.mod_rev == b.mod_rev == await s.revision()
            revs = [e.rev async for e in _bounded(s, a.mod_rev)]
            assert revs[-1] == a.mod_rev and sorted(set(revs)) == list(range(1, a.mod_rev + 1))
            assert await s.put("/c", 1) == a.mod_rev + 1  # still writable
            await s.close()

        asyncio.run(check())


async def _bounded(s: SqliteStore, last: int):  # type: ignore[no-untyped-def]
    async with asyncio.timeout(10):
        async for ev in s.watch("/", 1):
            yield ev
            if ev.rev >= last and ev.key == "/b":
                return
