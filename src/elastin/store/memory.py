"""``MemoryStore``: the ``StateStore`` protocol in memory, for tests and simulations.

Same semantics as the SQLite store (revisions, compare-and-set, watch, compaction); nothing
survives the process.
"""

from __future__ import annotations

import bisect
import builtins
import copy
from collections.abc import Sequence

from elastin.store.base import (
    JSON,
    Compare,
    KeyValue,
    TxnResult,
    WatchEvent,
)
from elastin.store.hub import HubStore


class MemoryStore(HubStore):
    def __init__(self) -> None:
        self._kv: dict[str, KeyValue] = {}
        self._keys: list[str] = []  # sorted
        self._log: list[WatchEvent] = []
        self._rev = 0
        self._compacted = 0  # history below this revision is gone
        HubStore.__init__(self)

    async def revision(self) -> int:
        self._check()
        return self._rev

    async def get(self, key: str) -> KeyValue | None:
        self._check()
        kv = self._kv.get(key)
        return (
            None
            if kv is None
            else KeyValue(kv.key, copy.deepcopy(kv.value), kv.create_rev, kv.mod_rev)
        )

    def _range(self, prefix: str) -> list[KeyValue]:
        i = bisect.bisect_left(self._keys, prefix)
        out = []
        while i < len(self._keys) and self._keys[i].startswith(prefix):
            kv = self._kv[self._keys[i]]
            out.append(KeyValue(kv.key, copy.deepcopy(kv.value), kv.create_rev, kv.mod_rev))
            i += 1
        return out

    async def list(self, prefix: str) -> tuple[builtins.list[KeyValue], int]:
        self._check()
        return self._range(prefix), self._rev

    async def read(self, prefixes: Sequence[str]) -> tuple[dict[str, builtins.list[KeyValue]], int]:
        self._check()
        # No await between the prefixes: no write can land in between.
        return {p: self._range(p) for p in prefixes}, self._rev

    async def txn(
        self,
        compares: Sequence[Compare] = (),
        puts: Sequence[tuple[str, JSON]] = (),
        deletes: Sequence[str] = (),
    ) -> TxnResult:
        self._check()
        for c in compares:
            kv = self._kv.get(c.key)
            if (kv.mod_rev if kv else 0) != c.mod_rev:
                return TxnResult(False, self._rev)
        dels = [k for k in dict.fromkeys(deletes) if k in self._kv]
        if not puts and not dels:
            return TxnResult(True, self._rev)
        rev = self._rev + 1
        events: list[WatchEvent] = []
        for key in dels:
            del self._kv[key]
            self._keys.pop(bisect.bisect_left(self._keys, key))
            events.append(WatchEvent("delete", key, None, rev))
        for key, value in puts:
            value = copy.deepcopy(value)
            old = self._kv.get(key)
            if old is None:
                bisect.insort(self._keys, key)
            self._kv[key] = KeyValue(key, value, old.create_rev if old else rev, rev)
            events.append(WatchEvent("put", key, copy.deepcopy(value), rev))
        self._rev = rev
        self._log.extend(events)
        self._hub.publish(events)
        return TxnResult(True, rev)

    async def _history(self, prefix: str, from_rev: int) -> builtins.list[WatchEvent]:
        self._check_from(from_rev)
        i = bisect.bisect_left([e.rev for e in self._log], from_rev)
        return [e for e in self._log[i:] if e.key.startswith(prefix)]

    async def compact(self, keep_revisions: int) -> None:
        self._check()
        floor = max(0, self._rev - keep_revisions)
        self._log = [e for e in self._log if e.rev > floor]
        self._compacted = max(self._compacted, floor + 1)

    async def close(self) -> None:
        self._hub.close()
