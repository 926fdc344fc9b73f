"""State stores: the ``StateStore`` protocol (``base``) and its implementations.

Layer 2: the server keeps its durable state here (applications, nodes, allocations, events)
and watches it by revision; nothing here imports the rest of Elastin.

``sqlite.SqliteStore`` is the embedded default (WAL, durable across restarts);
``memory.MemoryStore`` is for tests and simulations; both share the watch fan-out of ``hub``.
``open_store(url)`` picks one from a URL (``sqlite:///path/state.db``, ``memory://``). An etcd
store is planned behind the same protocol.
"""

from elastin.store.base import (
    CompactedError,
    Compare,
    KeyValue,
    StateStore,
    StoreClosedError,
    StoreError,
    TxnResult,
    WatchEvent,
)
from elastin.store.memory import MemoryStore
from elastin.store.open import open_store
from elastin.store.sqlite import SqliteStore

__all__ = [
    "CompactedError",
    "Compare",
    "KeyValue",
    "MemoryStore",
    "SqliteStore",
    "StateStore",
    "StoreClosedError",
    "StoreError",
    "TxnResult",
    "WatchEvent",
    "open_store",
]
