"""State stores: the ``StateStore`` protocol (``base``) and its implementations.

Layer 2: the server keeps its durable state here (applications, nodes, allocations, events)
and watches it by revision; nothing here imports the rest of Elastin.

``sqlite.SqliteStore`` is the embedded default (WAL, durable across restarts);
``memory.MemoryStore`` is for tests and simulations; both share the watch fan-out of ``hub``.
``open_store(url)`` picks one from a URL (``sqlite:///path/state.db``, ``memory://``). An etcd
store is planned behind the same protocol. ``check_file`` checks a SQLite state file without
opening a store (``elastin store check``); ``raise_on_failure`` is how the server learns that
its store broke for good (a damaged file found while running).
"""

from elastin.store.base import (
    CompactedError,
    Compare,
    KeyValue,
    StateStore,
    StoreClosedError,
    StoreCorruptError,
    StoreError,
    StoreFullError,
    TxnResult,
    WatchEvent,
)
from elastin.store.hub import raise_on_failure
from elastin.store.memory import MemoryStore
from elastin.store.open import open_store
from elastin.store.sqlite import CheckReport, SqliteStore, check_file

__all__ = [
    "CheckReport",
    "CompactedError",
    "Compare",
    "KeyValue",
    "MemoryStore",
    "SqliteStore",
    "StateStore",
    "StoreClosedError",
    "StoreCorruptError",
    "StoreError",
    "StoreFullError",
    "TxnResult",
    "WatchEvent",
    "check_file",
    "open_store",
    "raise_on_failure",
]
