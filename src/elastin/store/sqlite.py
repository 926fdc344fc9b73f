"""``SqliteStore``: the embedded, durable ``StateStore`` (SQLite in WAL mode).

On-disk schema::

    meta(name TEXT PRIMARY KEY, value)          'format' = 'elastin-state-1',
                                                'revision', 'compacted'
    kv(key TEXT PRIMARY KEY, value TEXT,        value is JSON text
       create_rev INTEGER, mod_rev INTEGER)
    log(rev INTEGER, seq INTEGER, key TEXT,     one row per change, for watch replay
        type TEXT, value TEXT, PRIMARY KEY (rev, seq))

Every transaction is one SQLite transaction (``BEGIN IMMEDIATE`` … ``COMMIT``): a process
killed at any moment leaves the state of the last committed revision, never half of one.
The file is created 0600. The store is used by one process (the server) from its event loop;
the calls are short and run synchronously.
"""

from __future__ import annotations

import builtins
import json
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from elastin.store.base import (
    JSON,
    Compare,
    KeyValue,
    StoreError,
    TxnResult,
    WatchEvent,
)
from elastin.store.hub import HubStore

FORMAT = "elastin-state-1"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY, value TEXT NOT NULL,
    create_rev INTEGER NOT NULL, mod_rev INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS log (
    rev INTEGER NOT NULL, seq INTEGER NOT NULL, key TEXT NOT NULL,
    type TEXT NOT NULL, value TEXT, PRIMARY KEY (rev, seq));
"""


def _prefix_end(prefix: str) -> str:
    """The smallest string greater than every string starting with ``prefix``."""
    return prefix + "\U0010ffff"


class SqliteStore(HubStore):
    def __init__(self, path: str | os.PathLike[str], *, durable: bool = False) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():
                fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
                os.close(fd)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(SCHEMA)
            fmt = self._meta("format")
            if fmt is None:
                if self._db.execute("SELECT count(*) FROM kv").fetchone()[0]:
                    raise StoreError(f"{self.path} is not an Elastin state database")
                self._db.execute("INSERT INTO meta VALUES ('format', ?)", (FORMAT,))
            elif fmt != FORMAT:
                raise StoreError(
                    f"{self.path} has state format {fmt!r}; this Elastin reads {FORMAT!r}"
                )
        except sqlite3.DatabaseError as e:
            raise StoreError(
                f"{self.path} is not an Elastin state database ({e}); move it aside or point "
                "--store at another file"
            ) from None
        self._rev = int(self._meta("revision") or 0)
        self._compacted = int(self._meta("compacted") or 0)
        HubStore.__init__(self)

    def _meta(self, name: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    async def revision(self) -> int:
        self._check()
        return self._rev

    async def get(self, key: str) -> KeyValue | None:
        self._check()
        row = self._db.execute(
            "SELECT key, value, create_rev, mod_rev FROM kv WHERE key = ?", (key,)
        ).fetchone()
        return None if row is None else KeyValue(row[0], json.loads(row[1]), row[2], row[3])

    def _range(self, prefix: str) -> list[KeyValue]:
        rows = self._db.execute(
            "SELECT key, value, create_rev, mod_rev FROM kv WHERE key >= ? AND key < ? "
            "ORDER BY key",
            (prefix, _prefix_end(prefix)),
        ).fetchall()
        return [KeyValue(r[0], json.loads(r[1]), r[2], r[3]) for r in rows]

    async def list(self, prefix: str) -> tuple[builtins.list[KeyValue], int]:
        self._check()
        return self._range(prefix), self._rev

    async def read(self, prefixes: Sequence[str]) -> tuple[dict[str, builtins.list[KeyValue]], int]:
        self._check()
        # One read transaction: every prefix sees the same committed state.
        self._db.execute("BEGIN")
        try:
            return {p: self._range(p) for p in prefixes}, self._rev
        finally:
            self._db.execute("COMMIT")

    async def txn(
        self,
        compares: Sequence[Compare] = (),
        puts: Sequence[tuple[str, JSON]] = (),
        deletes: Sequence[str] = (),
    ) -> TxnResult:
        self._check()
        db = self._db
        encoded = [(k, json.dumps(v, separators=(",", ":"))) for k, v in puts]
        db.execute("BEGIN IMMEDIATE")
        try:
            for c in compares:
                row = db.execute("SELECT mod_rev FROM kv WHERE key = ?", (c.key,)).fetchone()
                if (row[0] if row else 0) != c.mod_rev:
                    db.execute("ROLLBACK")
                    return TxnResult(False, self._rev)
            dels = [
                k
                for k in dict.fromkeys(deletes)
                if db.execute("SELECT 1 FROM kv WHERE key = ?", (k,)).fetchone()
            ]
            if not encoded and not dels:
                db.execute("ROLLBACK")
                return TxnResult(True, self._rev)
            rev = self._rev + 1
            events: list[WatchEvent] = []
            seq = 0
            for key in dels:
                db.execute("DELETE FROM kv WHERE key = ?", (key,))
                db.execute("INSERT INTO log VALUES (?, ?, ?, 'delete', NULL)", (rev, seq, key))
                events.append(WatchEvent("delete", key, None, rev))
                seq += 1
            for key, text in encoded:
                db.execute(
                    "INSERT INTO kv VALUES (?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
                    "value = excluded.value, mod_rev = excluded.mod_rev",
                    (key, text, rev, rev),
                )
                db.execute("INSERT INTO log VALUES (?, ?, ?, 'put', ?)", (rev, seq, key, text))
                events.append(WatchEvent("put", key, json.loads(text), rev))
                seq += 1
            db.execute("INSERT OR REPLACE INTO meta VALUES ('revision', ?)", (rev,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        self._rev = rev
        self._hub.publish(events)
        return TxnResult(True, rev)

    async def _history(self, prefix: str, from_rev: int) -> builtins.list[WatchEvent]:
        self._check_from(from_rev)
        rows = self._db.execute(
            "SELECT rev, key, type, value FROM log WHERE rev >= ? AND key >= ? AND key < ? "
            "ORDER BY rev, seq",
            (from_rev, prefix, _prefix_end(prefix)),
        ).fetchall()
        return [
            WatchEvent(
                "delete" if r[2] == "delete" else "put",
                r[1],
                None if r[3] is None else json.loads(r[3]),
                r[0],
            )
            for r in rows
        ]

    async def compact(self, keep_revisions: int) -> None:
        self._check()
        floor = max(0, self._rev - keep_revisions)
        self._db.execute("BEGIN IMMEDIATE")
        self._db.execute("DELETE FROM log WHERE rev <= ?", (floor,))
        self._compacted = max(self._compacted, floor + 1)
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('compacted', ?)", (self._compacted,))
        self._db.execute("COMMIT")

    async def close(self) -> None:
        if not self._hub.closed:
            self._hub.close()
            self._db.close()
