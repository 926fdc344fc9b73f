"""The StateStore contract, run against both implementations (memory and SQLite)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elastin.store import (
    CompactedError,
    Compare,
    MemoryStore,
    SqliteStore,
    StateStore,
    StoreClosedError,
    StoreError,
    WatchEvent,
    open_store,
)


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StateStore]:
    s: StateStore = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "s.db")
    yield s
    await s.close()


async def collect(store: StateStore, prefix: str, from_rev: int, n: int) -> list[WatchEvent]:
    out: list[WatchEvent] = []
    async with asyncio.timeout(10):
        async for ev in store.watch(prefix, from_rev):
            out.append(ev)
            if len(out) == n:
                break
    return out


async def test_revisions_gets_and_lists(store: StateStore) -> None:
    assert await store.revision() == 0
    assert await store.put("/a/1", {"x": 1}) == 1
    assert await store.put("/a/2", [1, 2]) == 2
    assert await store.put("/b/1", "s") == 3
    assert await store.put("/a/1", {"x": 2}) == 4
    kv = await store.get("/a/1")
    assert kv is not None and kv.value == {"x": 2} and kv.create_rev == 1 and kv.mod_rev == 4
    items, rev = await store.list("/a/")
    assert [k.key for k in items] == ["/a/1", "/a/2"] and rev == 4
    assert await store.get("/nope") is None
    assert await store.delete("/nope") == 4  # nothing deleted: no new revision
    assert await store.delete("/a/2") == 5
    assert [k.key for k in (await store.list("/"))[0]] == ["/a/1", "/b/1"]


async def test_compare_and_set(store: StateStore) -> None:
    res = await store.txn([Compare("/k", 0)], puts=[("/k", 1), ("/j", 1)])
    assert res.succeeded and res.rev == 1
    res = await store.txn([Compare("/k", 0)], puts=[("/k", 2)])  # exists now
    assert not res.succeeded and res.rev == 1
    assert (await store.get("/k")).value == 1  # type: ignore[union-attr]
    res = await store.txn([Compare("/k", 1)], puts=[("/k", 3)], deletes=["/j"])
    assert res.succeeded and res.rev == 2
    assert await store.get("/j") is None
    assert (await store.txn()).rev == 2  # nothing effective: no new revision


async def test_watch_replays_then_follows_live(store: StateStore) -> None:
    await store.put("/w/a", 1)
    await store.put("/x/a", 1)
    await store.txn(puts=[("/w/b", 2), ("/w/c", 3)])

    async def writer() -> None:
        await asyncio.sleep(0.05)
        await store.put("/w/d", 4)
        await store.delete("/w/a")

    task = asyncio.create_task(writer())
    events = await collect(store, "/w/", 1, 5)
    await task
    assert [(e.type, e.key, e.rev) for e in events] == [
        ("put", "/w/a", 1),
        ("put", "/w/b", 3),
        ("put", "/w/c", 3),
        ("put", "/w/d", 4),
        ("delete", "/w/a", 5),
    ]
    assert events[-1].value is None
    middle = await collect(store, "/w/", 4, 2)
    assert [e.rev for e in middle] == [4, 5]


async def test_two_watchers_see_every_revision_once(store: StateStore) -> None:
    n = 1000

    async def write() -> None:
        for i in range(n):
            await store.put(f"/c/{i % 7}", i)
            if i % 50 == 0:
                await asyncio.sleep(0)

    w1 = asyncio.create_task(collect(store, "/c/", 1, n))
    w2 = asyncio.create_task(collect(store, "/", 1, n))
    await asyncio.sleep(0)
    await write()
    for events in (await w1, await w2):
        assert [e.rev for e in events] == list(range(1, n + 1))


async def test_compaction_and_close(store: StateStore) -> None:
    for i in range(10):
        await store.put("/k", i)
    await store.compact(3)
    with pytest.raises(CompactedError):
        await collect(store, "/", 2, 1)
    assert [e.rev for e in await collect(store, "/", 8, 3)] == [8, 9, 10]
    assert (await store.get("/k")).value == 9  # type: ignore[union-attr]

    async def watch_all() -> list[WatchEvent]:
        return [ev async for ev in store.watch("/", 11)]

    task = asyncio.create_task(watch_all())
    await asyncio.sleep(0.05)
    await store.close()
    async with asyncio.timeout(5):
        assert await task == []  # closing ends every watch
    with pytest.raises(StoreClosedError):
        await store.put("/k", 1)


async def test_read_several_prefixes_at_one_revision(store: StateStore) -> None:
    await store.txn(puts=[("/a/1", 1), ("/a/2", 2), ("/ab", 3), ("/b/1", 4)])
    await store.put("/a/1", 5)
    got, rev = await store.read(["/a/", "/b/", "/a", "/none/"])
    assert rev == await store.revision() == 2
    assert {
        p: [(kv.key, kv.value, kv.create_rev, kv.mod_rev) for kv in kvs] for p, kvs in got.items()
    } == {
        "/a/": [("/a/1", 5, 1, 2), ("/a/2", 2, 1, 1)],
        "/b/": [("/b/1", 4, 1, 1)],
        "/a": [("/a/1", 5, 1, 2), ("/a/2", 2, 1, 1), ("/ab", 3, 1, 1)],  # overlaps: each its own
        "/none/": [],
    }
    assert await store.read([]) == ({}, 2)


async def test_read_never_mixes_two_revisions_while_a_writer_runs(store: StateStore) -> None:
    """The writer updates a key under each of two prefixes in one transaction, many times;
    every read sees the two equal, at the revision it reports."""
    n = 200
    seen: set[int] = set()

    async def write() -> None:
        for i in range(1, n + 1):
            await store.txn(puts=[("/x/k", i), ("/y/k", i)])
            await asyncio.sleep(0.001)  # pacing: the memory store never yields on its own

    async def read_until(writer: asyncio.Task[None]) -> None:
        while True:
            done = writer.done()
            got, rev = await store.read(["/x/", "/y/"])
            if got["/x/"]:
                (x,), (y,) = got["/x/"], got["/y/"]
                assert x.value == y.value and x.mod_rev == y.mod_rev == rev
                seen.add(x.value)
            if done:
                return
            # pacing, not synchronisation: readers that never sleep would hold the GIL
            # against the SQLite store's worker thread (its writes would crawl)
            await asyncio.sleep(0.001)

    async with asyncio.TaskGroup() as tg:
        writer = tg.create_task(write())
        for _ in range(3):
            tg.create_task(read_until(writer))
    assert n in seen and len(seen) > 10  # the reads did run between the writes


def test_open_store_urls(tmp_path: Path) -> None:
    assert isinstance(open_store("memory://"), MemoryStore)
    s = open_store(f"sqlite:///{tmp_path}/a/b.db")
    assert isinstance(s, SqliteStore) and (tmp_path / "a" / "b.db").exists()
    assert os.stat(tmp_path / "a" / "b.db").st_mode & 0o777 == 0o600
    for bad, words in (
        ("etcd://x:2379", "not available"),
        ("redis://x", "unknown"),
        ("sqlite://", "names no file"),
    ):
        with pytest.raises(StoreError, match=words):
            open_store(bad)


async def test_sqlite_survives_reopen_and_rejects_foreign_files(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    s = SqliteStore(path)
    await s.put("/a", {"v": 1})
    await s.txn(puts=[("/b", 2)], deletes=["/a"])
    await s.close()
    s = SqliteStore(path)
    assert await s.revision() == 2
    assert await s.get("/a") is None and (await s.get("/b")).value == 2  # type: ignore[union-attr]
    assert [(e.type, e.key) for e in await collect(s, "/", 1, 3)] == [
        ("put", "/a"),
        ("delete", "/a"),
        ("put", "/b"),
    ]
    await s.close()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not an Elastin state database"):
        SqliteStore(junk)


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from(["/a", "/b", "/c/d"]), st.integers(0, 9)),
        st.tuples(st.just("del"), st.sampled_from(["/a", "/b", "/c/d"]), st.just(0)),
        st.tuples(st.just("cas"), st.sampled_from(["/a", "/b"]), st.integers(0, 6)),
    ),
    max_size=25,
)


@settings(max_examples=40, deadline=None)
@given(ops=OPS, kind=st.sampled_from(["memory", "sqlite"]))
def test_model_based(ops: list[tuple[str, str, int]], kind: str, tmp_path_factory: Any) -> None:
    async def run() -> None:
        path = tmp_path_factory.mktemp("mb") / "s.db"
        s: StateStore = MemoryStore() if kind == "memory" else SqliteStore(path)
        model: dict[str, tuple[int, int]] = {}  # key -> (value, mod_rev)
        rev = 0
        for op, key, v in ops:
            if op == "put":
                rev += 1
                assert await s.put(key, v) == rev
                model[key] = (v, rev)
            elif op == "del":
                if key in model:
                    rev += 1
                    del model[key]
                assert await s.delete(key) == rev
            else:
                res = await s.txn([Compare(key, v)], puts=[(key, v)])
                expected = (model[key][1] if key in model else 0) == v
                assert res.succeeded == expected
                if expected:
                    rev += 1
                    model[key] = (v, rev)
        items, got_rev = await s.list("/")
        assert got_rev == rev
        assert {k.key: (k.value, k.mod_rev) for k in items} == model
        # replaying the watch rebuilds the same key space, with no gaps in revisions
        if rev:
            replay: dict[str, Any] = {}
            seen: list[int] = []
            async with asyncio.timeout(5):
                async for ev in s.watch("/", 1):
                    if ev.type == "put":
                        replay[ev.key] = ev.value
                    else:
                        replay.pop(ev.key, None)
                    if not seen or seen[-1] != ev.rev:
                        seen.append(ev.rev)
                    if ev.rev == rev:
                        break
            assert seen == list(range(1, rev + 1))
            assert replay == {k: val for k, (val, _) in model.items()}
        await s.close()

    asyncio.run(run())


def test_a_commit_that_fails_is_rolled_back_and_the_next_one_works() -> None:
    import sqlite3

    from elastin.store.sqlite import _transaction

    db = sqlite3.connect(":memory:", isolation_level=None)
    db.execute("PRAGMA foreign_keys=ON")
    db.execute("CREATE TABLE p(id INTEGER PRIMARY KEY)")
    db.execute("CREATE TABLE c(pid INTEGER REFERENCES p(id) DEFERRABLE INITIALLY DEFERRED)")
    with pytest.raises(sqlite3.IntegrityError), _transaction(db, "BEGIN IMMEDIATE"):
        db.execute("INSERT INTO c VALUES (42)")  # fails only at COMMIT
    assert not db.in_transaction
    with _transaction(db, "BEGIN IMMEDIATE"):
        db.execute("INSERT INTO p VALUES (1)")
    assert db.execute("SELECT count(*) FROM p").fetchone() == (1,)


async def test_deletes_replay_in_the_order_they_were_published(store: StateStore) -> None:
    await store.txn(puts=[("/a", 1), ("/b", 2)])
    watching = asyncio.create_task(collect(store, "/", 2, 2))
    for _ in range(20):  # let the watcher subscribe
        await asyncio.sleep(0)
    await store.txn(deletes=["/b", "/nope", "/a"])
    live = [(e.type, e.key) for e in await watching]
    replay = [(e.type, e.key) for e in await collect(store, "/", 2, 2)]
    assert live == replay == [("delete", "/b"), ("delete", "/a")]
