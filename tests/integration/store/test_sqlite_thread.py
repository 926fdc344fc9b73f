"""The SQLite store runs SQLite on its own worker thread, never on the event loop; reads
answer from the loop's mirror of the table, at the last delivered revision.

A second connection to the same file holds the write lock (``BEGIN IMMEDIATE``) to make the
store's SQLite calls block for as long as a test wants, with no timing: while they wait, the
loop must keep running; once the test commits, they finish in the order they were called.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from elastin.store import SqliteStore, StoreClosedError, StoreError, WatchEvent

pytestmark = pytest.mark.integration


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
async def store(path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(path)
    yield s
    await s.close()


@pytest.fixture
def other(path: Path, store: SqliteStore) -> Iterator[sqlite3.Connection]:
    """Another connection to the store's file (autocommit: the test begins and ends)."""
    db = sqlite3.connect(path, isolation_level=None)
    yield db
    db.close()


async def turn_the_loop(times: int = 20) -> None:
    for _ in range(times):
        await asyncio.sleep(0)


async def test_the_connection_belongs_to_another_thread(store: SqliteStore) -> None:
    await store.put("/k", 1)
    with pytest.raises(sqlite3.ProgrammingError, match="same thread"):
        store._db.execute("SELECT 1")  # the loop's thread may not use it: only the worker does


async def test_the_loop_runs_while_sqlite_waits(
    store: SqliteStore, other: sqlite3.Connection
) -> None:
    other.execute("BEGIN IMMEDIATE")  # the store's next write waits for this lock
    ticks = 0
    async with asyncio.TaskGroup() as tg:
        put = tg.create_task(store.put("/k", 1))
        for _ in range(20):
            await asyncio.sleep(0)
            ticks += 1
        # Run on the loop, the put would have blocked it until busy_timeout and failed.
        assert ticks == 20 and not put.done()
        # reads do not wait for SQLite at all: the mirror answers at the delivered revision
        assert await store.get("/k") is None and await store.revision() == 0
        other.execute("COMMIT")
    assert put.result() == 1
    kv = await store.get("/k")  # the write was delivered before its caller resumed
    assert kv is not None and kv.value == 1 and kv.mod_rev == 1


async def test_close_finishes_pending_work_then_stops_its_thread(
    path: Path, other: sqlite3.Connection
) -> None:
    before = set(threading.enumerate())
    store = SqliteStore(path)
    (worker,) = set(threading.enumerate()) - before
    assert worker.name.startswith("elastin-sqlite")

    async def watch() -> list[WatchEvent]:
        return [ev async for ev in store.watch("/", 1)]

    async with asyncio.TaskGroup() as tg:
        watcher = tg.create_task(watch())
        await turn_the_loop()  # subscribed; its replay has been read
        other.execute("BEGIN IMMEDIATE")
        puts = [tg.create_task(store.put(f"/k/{i}", i)) for i in range(5)]
        await turn_the_loop()
        closing = tg.create_task(store.close())
        await turn_the_loop()
        assert not closing.done() and not any(p.done() for p in puts)
        with pytest.raises(StoreClosedError):
            await store.get("/k/0")  # closing: no new work
        other.execute("COMMIT")
    assert [p.result() for p in puts] == [1, 2, 3, 4, 5]
    assert [(e.key, e.rev) for e in watcher.result()] == [(f"/k/{i}", i + 1) for i in range(5)]
    assert not worker.is_alive()
    await store.close()  # again: nothing to do

    reopened = SqliteStore(path)
    assert await reopened.revision() == 5
    await reopened.close()


async def test_a_cancelled_caller_does_not_undo_its_write(
    store: SqliteStore, other: sqlite3.Connection
) -> None:
    events: list[WatchEvent] = []

    async def watch() -> None:
        async for ev in store.watch("/", 1):
            events.append(ev)
            return

    async with asyncio.TaskGroup() as tg:
        watcher = tg.create_task(watch())
        await turn_the_loop()
        other.execute("BEGIN IMMEDIATE")
        put = tg.create_task(store.put("/k", 1))
        await turn_the_loop()
        put.cancel()
        other.execute("COMMIT")
        await watcher  # the write is delivered although its caller went away
        kv = await store.get("/k")
        assert kv is not None and kv.value == 1
        assert await store.revision() == 1
    assert put.cancelled() and [(e.key, e.rev) for e in events] == [("/k", 1)]


async def test_sqlite_errors_become_store_errors_and_roll_back(
    store: SqliteStore, other: sqlite3.Connection
) -> None:
    await store.put("/k", 1)
    other.execute("DROP TABLE log")  # the store's next write cannot log its change
    with pytest.raises(StoreError, match="no such table: log") as info:
        await store.txn(puts=[("/k", 2), ("/j", 2)])
    assert isinstance(info.value.__cause__, sqlite3.OperationalError)
    kv = await store.get("/k")
    assert kv is not None and kv.value == 1 and await store.get("/j") is None
    assert await store.revision() == 1


async def test_the_mirror_is_the_table_after_reopening(path: Path) -> None:
    store = SqliteStore(path)
    await store.txn(puts=[("/a/1", {"x": 1}), ("/a/2", 2), ("/b/1", 3)])
    await store.txn(puts=[("/a/1", {"x": 9})], deletes=["/a/2"])
    before = await store.read(["/a/", "/b/"])
    await store.close()
    reopened = SqliteStore(path)
    try:
        assert await reopened.read(["/a/", "/b/"]) == before
        (kv,) = before[0]["/a/"]
        assert (kv.value, kv.create_rev, kv.mod_rev) == ({"x": 9}, 1, 2)
    finally:
        await reopened.close()
