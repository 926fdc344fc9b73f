"""``Cluster``: the server's rooms, built over one store and wired together.

    apps       Apps       apply, diff, scale, stop, delete; settlement       (apps.py)
    nodes      Nodes      register, heartbeat, liveness; a node's allocations (nodes.py)
    reports    Reports    agents' reports on their allocations               (reports.py)
    applier    Applier    scheduling passes and the plan commit              (applier.py)
    mesh       MeshFeed   mesh snapshots, streams, acks, the registry        (meshfeed.py)
    telemetry  Telemetry  measured usage and proxy counters (memory only)    (telemetry.py)
    views      Views      read-only views for the API                        (views.py)
    autoscaler Autoscaler horizontal autoscaling decisions, applied as scales (autoscaler.py)
    vertical   VerticalScaler  resize in place; the vertical recommenders    (vertical.py)

They share a ``Repo`` (typed store access), a ``Changes`` (the watermarks blocking queries
wait on, and the applier's kick) and a ``Clock``. The flow of one change::

    API -> apps.apply -> repo.commit -> changes.committed ─┬─> applier.run: schedule_once
                                                            │     -> plan_writes -> repo.commit
                                                            │     -> changes.touch_nodes
                                                            ├─> nodes.allocations (agents wake)
                                                            └─> mesh.stream (snapshots pushed)

``Cluster.open`` reads the store's revision once, so that an index an agent got from an
earlier server process is honoured. ``run`` owns the background work (the scheduling loop
and the autoscaler's);
``close`` answers every blocking query at once (the server is stopping).
"""

from __future__ import annotations

import asyncio

from elastin.clock import SYSTEM, Clock
from elastin.scheduler import SchedulerOptions
from elastin.server.applier import Applier
from elastin.server.apps import Apps
from elastin.server.autoscaler import Autoscaler
from elastin.server.meshfeed import MeshFeed
from elastin.server.nodes import Nodes
from elastin.server.repo import Repo
from elastin.server.reports import Reports
from elastin.server.telemetry import Telemetry
from elastin.server.vertical import VerticalScaler
from elastin.server.views import Views
from elastin.server.waits import Changes
from elastin.store.base import StateStore


class Cluster:
    def __init__(
        self,
        store: StateStore,
        *,
        revision: int = 0,
        clock: Clock = SYSTEM,
        options: SchedulerOptions | None = None,
        seed: int | None = None,
    ) -> None:
        self.clock = clock
        self.changes = Changes(revision)
        repo = Repo(store, clock)
        self.telemetry = Telemetry(clock)
        self.apps = Apps(repo, self.changes, clock)
        self.nodes = Nodes(repo, self.changes, self.telemetry, clock)
        self.reports = Reports(repo, self.changes, clock)
        self.applier = Applier(
            store, repo, self.changes, self.nodes, options=options, seed=seed, clock=clock
        )
        self.mesh = MeshFeed(repo, self.changes, clock)
        self.views = Views(store, repo, self.apps, self.telemetry)
        self.autoscaler = Autoscaler(repo, self.apps, self.telemetry, clock)
        self.vertical = VerticalScaler(
            repo, self.changes, self.telemetry, self.applier.new_id, clock
        )

    @classmethod
    async def open(
        cls,
        store: StateStore,
        *,
        clock: Clock = SYSTEM,
        options: SchedulerOptions | None = None,
        seed: int | None = None,
    ) -> Cluster:
        """The cluster over ``store``, starting from its current revision."""
        revision = await store.revision()
        return cls(store, revision=revision, clock=clock, options=options, seed=seed)

    async def run(self) -> None:
        """The background work (the scheduling loop, the horizontal and vertical
        autoscalers), until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.applier.run())
            tg.create_task(self.autoscaler.run())
            tg.create_task(self.vertical.run())

    def close(self) -> None:
        """Answer every blocking query now (the server is stopping; agents ask again)."""
        self.changes.close()
