"""State stores: the ``StateStore`` protocol (``base``) and its implementations.

``sqlite.SqliteStore`` is the embedded default (WAL, durable across restarts);
``memory.MemoryStore`` is for tests and simulations. ``open_store(url)`` picks one from a URL
(``sqlite:///path/state.db``, ``memory://``).
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
