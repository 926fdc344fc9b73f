"""``open_store(url)``: pick a ``StateStore`` implementation from a URL.

    sqlite:///abs/path/state.db     SQLite file (absolute path)
    sqlite:relative/path.db         SQLite file (relative to the working directory)
    memory://                       in memory (tests)

``etcd://`` is planned behind the same protocol.
"""

from __future__ import annotations

from elastin.store.base import StateStore, StoreError
from elastin.store.memory import MemoryStore
from elastin.store.sqlite import SqliteStore


def open_store(url: str) -> StateStore:
    if url.startswith("sqlite://"):
        path = url[len("sqlite://") :]
        if not path:
            raise StoreError(f"store URL {url!r} names no file; write sqlite:///path/state.db")
        if path.startswith("//"):  # sqlite:////abs/path: one slash, as messages show it
            path = "/" + path.lstrip("/")
        return SqliteStore(path)
    if url.startswith("sqlite:"):
        path = url[len("sqlite:") :]
        if not path:
            raise StoreError(f"store URL {url!r} names no file; write sqlite:state.db")
        return SqliteStore(path)
    if url in ("memory://", "memory:"):
        return MemoryStore()
    if url.startswith("etcd://"):
        raise StoreError(
            "the etcd store is not available yet; use sqlite:///path/state.db (the default)"
        )
    raise StoreError(f"unknown store URL {url!r}; use sqlite:///path/state.db or memory://")
