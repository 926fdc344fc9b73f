"""The ``StateStore`` protocol: a revisioned key-value store with transactions and watch.

Modelled on etcd v3 so that an etcd implementation can follow behind the same protocol:

* one store-wide revision counter, incremented by every successful write transaction;
* every key carries ``create_rev`` and ``mod_rev``;
* ``read`` returns several prefixes at one revision (a consistent snapshot);
* ``txn`` applies puts and deletes atomically if every ``Compare`` holds (compare-and-set);
* ``watch(prefix, from_rev)`` yields every change with ``rev >= from_rev`` under ``prefix``,
  in revision order, none missed and none twice, then follows new changes live.

Values are JSON-compatible Python objects (dict, list, str, int, float, bool, None); the store
serialises them. Keys are ``/``-separated strings such as ``/apps/shop`` or ``/allocs/<id>``.

Exceptions::

    StoreError                 root
     ├── CompactedError        watch asked for a revision older than the retained history
     ├── StoreClosedError      the store was closed
     ├── StoreCorruptError     the state file is damaged (found at open or while running):
     │                         the server stops; restore a backup or move the file away
     └── StoreFullError        a write failed for lack of disk space, after its retries
"""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

JSON = Any


_DEFERRABLE: ContextVar[bool] = ContextVar("elastin_store_deferrable", default=False)


@contextlib.contextmanager
def deferrable() -> Iterator[None]:
    """Writes made inside (in this task) are background upkeep — a heartbeat's timestamp,
    pruning, compaction — that can wait: on a full disk they are refused at once and never
    take the space the store keeps for what must go through (stopping things)."""
    token = _DEFERRABLE.set(True)
    try:
        yield
    finally:
        _DEFERRABLE.reset(token)


def is_deferrable() -> bool:
    """Whether the write being made now is ``deferrable``."""
    return _DEFERRABLE.get()


class StoreError(Exception):
    """Root of the store's exceptions."""


class CompactedError(StoreError):
    """The requested watch revision is older than the oldest change still kept."""

    def __init__(self, requested: int, oldest: int) -> None:
        self.requested = requested
        self.oldest = oldest
        super().__init__(
            f"revision {requested} has been compacted; the oldest kept is {oldest}: "
            "list again and watch from the revision the list returned"
        )


class StoreClosedError(StoreError):
    """An operation on a closed store."""


class StoreCorruptError(StoreError):
    """The state file ``path`` is damaged (``problem`` says how): nothing can be trusted or
    written; the message says what to do."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        self.hint = damage_advice(path)
        super().__init__(
            f"the state database {path} is damaged ({problem}); Elastin will not use it. "
            + self.hint
        )


def damage_advice(path: str) -> str:
    """What to do about a damaged state file: one text for the server, the API and the CLI."""
    return (
        f"Restore a backup of it, run `elastin store check` for the details, or move it away "
        f"(mv {path} {path}.damaged) and start with an empty state (apply your specs again)"
    )


class StoreFullError(StoreError):
    """A write to ``path`` failed for lack of space on the filesystem mounted at
    ``filesystem``, after its retries; nothing of it was applied."""

    def __init__(self, path: str, filesystem: str) -> None:
        self.path = path
        self.filesystem = filesystem
        super().__init__(
            f"the data directory's disk is full: the state database {path} cannot be written, "
            f"nothing was changed; free space on {filesystem}"
        )


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: JSON
    create_rev: int
    mod_rev: int


@dataclass(frozen=True, slots=True)
class Compare:
    """A transaction guard on one key: its ``mod_rev`` must equal ``mod_rev``.

    ``mod_rev=0`` means "the key must not exist".
    """

    key: str
    mod_rev: int


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: Literal["put", "delete"]
    key: str
    value: JSON  # the new value; None for deletes
    rev: int  # revision of the transaction that made this change


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    rev: int  # the new revision when succeeded, else the current revision


@runtime_checkable
class StateStore(Protocol):
    async def revision(self) -> int:
        """The current revision (0 for an empty, never-written store)."""
        ...

    async def get(self, key: str) -> KeyValue | None: ...

    async def list(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key starting with ``prefix`` in key order, and the revision they were read at."""
        ...

    async def read(self, prefixes: Sequence[str]) -> tuple[dict[str, builtins.list[KeyValue]], int]:
        """Every key under each of ``prefixes``, all read at one revision, and that revision.

        The answer maps each prefix to its keys in key order (overlapping prefixes each get
        theirs); no write lands between the prefixes, as with etcd's reads at one revision.
        """
        ...

    async def txn(
        self,
        compares: Sequence[Compare] = (),
        puts: Sequence[tuple[str, JSON]] = (),
        deletes: Sequence[str] = (),
    ) -> TxnResult:
        """Atomically apply ``puts`` and ``deletes`` if every compare holds.

        A transaction with no puts and no effective deletes does not bump the revision.
        """
        ...

    async def put(self, key: str, value: JSON) -> int:
        """Unconditional put; returns the new revision."""
        ...

    async def delete(self, key: str) -> int:
        """Unconditional delete; returns the new revision (unchanged if the key was absent)."""
        ...

    def watch(self, prefix: str, from_rev: int) -> AsyncIterator[WatchEvent]:
        """Changes under ``prefix`` with ``rev >= from_rev``, then live ones, until closed.

        Raises ``CompactedError`` (on first iteration) when ``from_rev`` is older than the
        history kept.
        """
        ...

    async def compact(self, keep_revisions: int) -> None:
        """Drop change history older than ``current - keep_revisions`` (values stay)."""
        ...

    async def close(self) -> None: ...
