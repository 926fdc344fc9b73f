"""Watch fan-out shared by the store implementations.

A store appends every committed change to its history and then calls ``Hub.publish``. A
watcher first subscribes (an unbounded queue), then replays history from its revision, then
drains the queue, skipping revisions it already yielded: nothing is missed in the gap between
replay and live, and nothing is yielded twice. Writers never wait for slow watchers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from elastin.store.base import (
    JSON,
    CompactedError,
    StoreClosedError,
    StoreError,
    TxnResult,
    WatchEvent,
)

_CLOSED = None


class Hub:
    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[list[WatchEvent] | None]] = set()
        self.closed = False

    def publish(self, events: Sequence[WatchEvent]) -> None:
        if events:
            batch = list(events)
            for q in self._queues:
                q.put_nowait(batch)

    def close(self) -> None:
        self.closed = True
        for q in self._queues:
            q.put_nowait(_CLOSED)

    async def watch(
        self,
        prefix: str,
        from_rev: int,
        history: Callable[[str, int], Awaitable[list[WatchEvent]]],
    ) -> AsyncIterator[WatchEvent]:
        """Replay ``history(prefix, from_rev)`` then follow live events; ends when closed."""
        if self.closed:
            raise StoreClosedError("the store is closed")
        q: asyncio.Queue[list[WatchEvent] | None] = asyncio.Queue()
        self._queues.add(q)
        try:
            last = from_rev - 1
            for ev in await history(prefix, from_rev):
                yield ev
                last = ev.rev
            while True:
                batch = await q.get()
                if batch is _CLOSED:
                    return
                for ev in batch:
                    if ev.rev > last and ev.key.startswith(prefix):
                        yield ev
                # a transaction's events share one revision: advance after the batch
                if batch:
                    last = max(last, batch[-1].rev)
        finally:
            self._queues.discard(q)


class HubStore:
    """What both stores share: the hub, the compaction floor, put/delete as transactions,
    and ``failed()``: how a store that breaks for good (a damaged file) says so once."""

    _compacted: int

    def __init__(self) -> None:
        self._hub = Hub()
        self._failure: StoreError | None = None  # set on the loop by ``_failed_now``
        self._failure_seen: asyncio.Event | None = None

    async def failed(self) -> StoreError:
        """Wait until the store is broken for good and return why (never returns for a
        store that does not break). The server stops on it rather than fail every call."""
        if self._failure is None:
            if self._failure_seen is None:
                self._failure_seen = asyncio.Event()
            await self._failure_seen.wait()
        assert self._failure is not None
        return self._failure

    def _failed_now(self, err: StoreError) -> None:
        """On the loop: the store is broken for good (``err``); wake ``failed()``."""
        if self._failure is None:
            self._failure = err
            if self._failure_seen is not None:
                self._failure_seen.set()

    async def txn(
        self,
        compares: Sequence[Any] = (),
        puts: Sequence[tuple[str, JSON]] = (),
        deletes: Sequence[str] = (),
    ) -> TxnResult:
        raise NotImplementedError

    async def _history(self, prefix: str, from_rev: int) -> list[WatchEvent]:
        raise NotImplementedError

    def _check(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._hub.closed:
            raise StoreClosedError("the store is closed")

    def _check_from(self, from_rev: int) -> None:
        if 0 < from_rev < self._compacted:
            raise CompactedError(from_rev, self._compacted)

    async def put(self, key: str, value: JSON) -> int:
        return (await self.txn(puts=[(key, value)])).rev

    async def delete(self, key: str) -> int:
        return (await self.txn(deletes=[key])).rev

    def watch(self, prefix: str, from_rev: int) -> AsyncIterator[WatchEvent]:
        return self._hub.watch(prefix, from_rev, self._history)


async def raise_on_failure(store: object) -> None:
    """Raise the error that breaks ``store`` for good, when it does (wait forever for a
    store that cannot break): the server runs it beside its work and stops on it."""
    if isinstance(store, HubStore):
        raise await store.failed()
    await asyncio.Event().wait()
