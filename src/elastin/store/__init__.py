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

__all__ = [
    "CompactedError",
    "Compare",
    "KeyValue",
    "StateStore",
    "StoreClosedError",
    "StoreError",
    "TxnResult",
    "WatchEvent",
]
