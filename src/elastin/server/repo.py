"""Typed access to the cluster state kept in a ``StateStore``.

Key layout (values are the model codec's JSON)::

    /apps/<name>            AppRecord: the application as applied, its per-workload spec
                            versions and history (``model/rollout.Revision``),
                            and workloads stopped by the user
    /allocs/<id>            Allocation
    /nodes/<id>             Node
    /events/<seq>           Event (kept to the newest ``EVENTS_KEPT``)

Only the server writes the store; agents, the CLI and the SDK go through the API.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

from elastin.clock import SYSTEM, Clock
from elastin.model.cluster import Allocation, Event, EventSpec, Node
from elastin.model.codec import from_data, to_data
from elastin.model.rollout import Revision, with_policy_of
from elastin.model.workload import Application, Workload
from elastin.store.base import JSON, Compare, KeyValue, StateStore

APPS = "/apps/"
ALLOCS = "/allocs/"
NODES = "/nodes/"
EVENTS = "/events/"
EVENTS_KEPT = 5000

T = TypeVar("T")


@dataclass(frozen=True)
class AppRecord:
    """An application as applied, with bookkeeping the scheduler and the diff need."""

    app: Application
    versions: dict[str, int] = field(default_factory=dict)  # workload -> spec version
    stopped: tuple[str, ...] = ()  # workloads stopped with `elastin stop`
    generation: int = 1  # bumped on every apply / scale / stop
    source: str = ""  # the file it came from
    applied_at: float = 0.0
    history: dict[str, tuple[Revision, ...]] = field(default_factory=dict)  # workload -> versions

    def with_version(self, w: Workload, version: int, history: tuple[Revision, ...]) -> AppRecord:
        """This record running ``w``'s spec at ``version`` (the replica count, the mesh and
        autoscale policies kept as they are now), with ``history`` as the workload's
        versions."""
        now = self.app.workload(w.name)
        spec = with_policy_of(w, now) if now is not None else w
        return replace(
            self,
            app=replace(
                self.app,
                workloads=tuple(spec if x.name == w.name else x for x in self.app.workloads),
            ),
            versions={**self.versions, w.name: version},
            history={**self.history, w.name: history},
            generation=self.generation + 1,
        )

    def for_mesh(self) -> Application:
        """The application as the mesh is built from it: every declared workload, stopped
        ones too (a stopped service keeps its cluster, with no endpoint: ``MeshFeed._read``),
        but a stopped one without its autoscale policy — it scales nothing back from zero, so
        its callers get the named 503 at once instead of a request held until its timeout."""
        if not self.stopped:
            return self.app
        return replace(
            self.app,
            workloads=tuple(
                replace(w, autoscale=None) if w.name in self.stopped else w
                for w in self.app.workloads
            ),
        )

    def effective(self) -> Application:
        """The application as the scheduler should run it: stopped workloads removed."""
        if not self.stopped:
            return self.app
        return replace(
            self.app, workloads=tuple(w for w in self.app.workloads if w.name not in self.stopped)
        )


@dataclass(frozen=True)
class Snapshot:
    revision: int
    apps: dict[str, tuple[AppRecord, int]]  # name -> (record, mod_rev)
    allocs: dict[str, tuple[Allocation, int]]
    nodes: dict[str, tuple[Node, int]]


class _Decoded(Generic[T]):
    """Decoded objects of one key prefix by key, each with the ``mod_rev`` it was read at.

    The model's objects are frozen, and a key's ``mod_rev`` changes with every write, so an
    object decoded once serves every later read of the same version: decoding (the model
    codec) was most of the cost of the server's reads, which the scheduler, the mesh feed
    and every polled view make all the time. A full listing of the prefix replaces the
    cache, which drops deleted keys."""

    def __init__(self, cls: type[T], prefix: str) -> None:
        self.cls = cls
        self.prefix = prefix
        self.by_key: dict[str, tuple[int, T]] = {}

    def one(self, kv: KeyValue) -> T:
        hit = self.by_key.get(kv.key)
        if hit is not None and hit[0] == kv.mod_rev:
            return hit[1]
        obj = from_data(self.cls, kv.value)
        self.by_key[kv.key] = (kv.mod_rev, obj)
        return obj

    def all(self, kvs: Sequence[KeyValue]) -> list[tuple[str, T, int]]:
        """``(name, object, mod_rev)`` of a full listing of the prefix."""
        old, self.by_key = self.by_key, {}
        out = []
        for kv in kvs:
            hit = old.get(kv.key)
            if hit is not None and hit[0] == kv.mod_rev:
                obj = hit[1]
            else:
                obj = from_data(self.cls, kv.value)
            self.by_key[kv.key] = (kv.mod_rev, obj)
            out.append((kv.key[len(self.prefix) :], obj, kv.mod_rev))
        return out


class Repo:
    """Reads and writes of the cluster state; a thin typed layer over a ``StateStore``."""

    def __init__(self, store: StateStore, clock: Clock = SYSTEM) -> None:
        self.store = store
        self.clock = clock
        self._seq = itertools.count()
        self._apps = _Decoded(AppRecord, APPS)
        self._allocs = _Decoded(Allocation, ALLOCS)
        self._nodes = _Decoded(Node, NODES)

    # reads -------------------------------------------------------------------------------
    async def snapshot(self) -> Snapshot:
        kvs, rev = await self.store.read((APPS, ALLOCS, NODES))  # one revision for all three
        return Snapshot(
            revision=rev,
            apps={k: (o, m) for k, o, m in self._apps.all(kvs[APPS])},
            allocs={k: (o, m) for k, o, m in self._allocs.all(kvs[ALLOCS])},
            nodes={k: (o, m) for k, o, m in self._nodes.all(kvs[NODES])},
        )

    async def get_app(self, name: str) -> tuple[AppRecord, int] | None:
        kv = await self.store.get(APPS + name)
        return None if kv is None else (self._apps.one(kv), kv.mod_rev)

    async def list_apps(self) -> list[AppRecord]:
        kvs, _ = await self.store.list(APPS)
        return [o for _, o, _ in self._apps.all(kvs)]

    async def get_alloc(self, alloc_id: str) -> tuple[Allocation, int] | None:
        kv = await self.store.get(ALLOCS + alloc_id)
        return None if kv is None else (self._allocs.one(kv), kv.mod_rev)

    async def list_allocs(self) -> tuple[list[Allocation], int]:
        kvs, rev = await self.store.list(ALLOCS)
        return [o for _, o, _ in self._allocs.all(kvs)], rev

    async def get_node(self, node_id: str) -> tuple[Node, int] | None:
        kv = await self.store.get(NODES + node_id)
        return None if kv is None else (self._nodes.one(kv), kv.mod_rev)

    async def list_nodes(self) -> list[Node]:
        return [n for n, _ in await self.list_nodes_with_revs()]

    async def list_nodes_with_revs(self) -> list[tuple[Node, int]]:
        kvs, _ = await self.store.list(NODES)
        return [(o, m) for _, o, m in self._nodes.all(kvs)]

    async def list_events(self, since_rev: int = 0, limit: int = 200) -> list[Event]:
        kvs, _ = await self.store.list(EVENTS)
        out = [replace(from_data(Event, kv.value), rev=kv.mod_rev) for kv in kvs]
        out = [e for e in out if e.rev > since_rev]
        return out[-limit:] if limit else out

    # writes ------------------------------------------------------------------------------
    def event_put(
        self,
        type_: str,
        subject: str,
        message: str,
        level: str = "info",
        data: Mapping[str, Any] | None = None,
    ) -> tuple[str, JSON]:
        now = self.clock.time()
        ev = Event(
            time=now,
            type=type_,
            subject=subject,
            message=message,
            level=level,  # type: ignore[arg-type]
            data=dict(data or {}),
        )
        # ordered by the (injected) clock, then by a counter within one process
        key = f"{EVENTS}{int(now * 1e9):020d}-{next(self._seq):06d}"
        return key, to_data(ev)

    async def record_events(
        self, events: Iterable[EventSpec], data: Sequence[Mapping[str, Any] | None] = ()
    ) -> None:
        """Write ``events``; ``data``: the structured values of the first ones (in order)."""
        specs = list(events)
        puts = [
            self.event_put(t, s, m, lvl, d)
            for (t, s, m, lvl), d in itertools.zip_longest(specs, data[: len(specs)])
        ]
        if puts:
            await self.store.txn(puts=puts)

    async def commit(
        self,
        *,
        compares: Sequence[Compare] = (),
        apps: Sequence[AppRecord] = (),
        allocs: Sequence[Allocation] = (),
        nodes: Sequence[Node] = (),
        delete_apps: Sequence[str] = (),
        delete_allocs: Sequence[str] = (),
        events: Sequence[EventSpec] = (),
        event_data: Sequence[Mapping[str, Any] | None] = (),
    ) -> int | None:
        """One atomic write; returns the new revision, or None when a compare failed.
        ``event_data``: the structured values of the first events (in order)."""
        puts: list[tuple[str, Any]] = []
        puts += [(APPS + a.app.name, to_data(a)) for a in apps]
        puts += [(ALLOCS + a.id, to_data(a)) for a in allocs]
        puts += [(NODES + n.id, to_data(n)) for n in nodes]
        puts += [
            self.event_put(t, s, m, lvl, d)
            for (t, s, m, lvl), d in itertools.zip_longest(events, event_data[: len(events)])
        ]
        deletes = [APPS + n for n in delete_apps] + [ALLOCS + i for i in delete_allocs]
        res = await self.store.txn(compares=compares, puts=puts, deletes=deletes)
        return res.rev if res.succeeded else None

    async def prune_events(self, keep: int = EVENTS_KEPT) -> None:
        kvs, _ = await self.store.list(EVENTS)
        if len(kvs) > keep:
            await self.store.txn(deletes=[kv.key for kv in kvs[: len(kvs) - keep]])

    @staticmethod
    def compare_alloc(alloc_id: str, mod_rev: int) -> Compare:
        return Compare(ALLOCS + alloc_id, mod_rev)

    @staticmethod
    def compare_node(node_id: str, mod_rev: int) -> Compare:
        return Compare(NODES + node_id, mod_rev)

    @staticmethod
    def compare_app(name: str, mod_rev: int) -> Compare:
        return Compare(APPS + name, mod_rev)
