"""The applier: runs the pure scheduler on a snapshot and commits its plan, Nomad's way.

``schedule_once`` takes a snapshot, asks ``elastin.scheduler.schedule`` for a plan, turns it
into writes with the pure ``plan_writes`` (the same function the scheduler's property tests
exercise) and commits them in one transaction guarded by the ``mod_rev`` of every allocation
whose current value the writes used. When something moved in between, the plan is re-checked
against a fresh snapshot (``check_plan``) and recomputed if it no longer holds.

``run`` is the scheduling loop: a pass when kicked (``Changes.kick``) and every ``interval``
s; it also marks silent nodes down and prunes old events and store history.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import secrets

from elastin.clock import SYSTEM, Clock
from elastin.scheduler import (
    ClusterState,
    Plan,
    SchedulerOptions,
    check_plan,
    plan_writes,
    schedule,
)
from elastin.server.nodes import Nodes
from elastin.server.repo import Repo, Snapshot
from elastin.server.waits import Changes
from elastin.store.base import StateStore, StoreError, deferrable

log = logging.getLogger("elastin.server")

HISTORY_KEPT = 100_000  # store revisions of change history kept for watchers
PRUNE_EVERY = 60.0  # seconds between prunes of events and history
_TRIES = 5
BURST = 0.01  # seconds a kicked pass waits to gather a burst of changes


def to_cluster_state(snap: Snapshot) -> ClusterState:
    return ClusterState(
        revision=snap.revision,
        nodes={k: n for k, (n, _) in snap.nodes.items()},
        apps={k: (rec.effective(), dict(rec.versions)) for k, (rec, _) in snap.apps.items()},
        allocations={k: a for k, (a, _) in snap.allocs.items()},
    )


class Applier:
    def __init__(
        self,
        store: StateStore,
        repo: Repo,
        changes: Changes,
        nodes: Nodes,
        *,
        options: SchedulerOptions | None = None,
        seed: int | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        self.store = store
        self.repo = repo
        self.changes = changes
        self.nodes = nodes
        self.options = options or SchedulerOptions()
        self.rng = random.Random(seed)
        self.clock = clock
        self._ids = itertools.count()
        self._lock = asyncio.Lock()  # one pass at a time

    def new_id(self) -> str:
        return secrets.token_hex(4) + f"{next(self._ids) % 0xFFFF:04x}"

    async def schedule_once(self) -> Plan | None:
        """One scheduling pass: plan on a snapshot, commit it with a revision check."""
        async with self._lock:
            snap = await self.repo.snapshot()
            state = to_cluster_state(snap)
            plan = schedule(state, self.options, self.rng, self.new_id)
            for _ in range(_TRIES):
                if plan.is_empty():
                    return None
                writes = plan_writes(state, plan, self.clock.time())
                rev = await self.repo.commit(
                    compares=[self.repo.compare_alloc(i, snap.allocs[i][1]) for i in writes.read],
                    allocs=list(writes.allocs.values()),
                    events=writes.events,
                )
                if rev is not None:
                    self.changes.touch_nodes({a.node_id for a in writes.allocs.values()}, rev)
                    self.changes.committed(rev)
                    return plan
                snap = await self.repo.snapshot()
                state = to_cluster_state(snap)
                if check_plan(plan, state):
                    plan = schedule(state, self.options, self.rng, self.new_id)
            log.warning("could not commit a plan after %d tries; the next pass retries", _TRIES)
            return None

    async def run(self, interval: float = 2.0) -> None:
        """The scheduling loop: a pass when kicked, and every ``interval`` seconds."""
        dirty = self.changes.dirty
        dirty.set()
        last_prune = self.clock.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await dirty.wait()
            dirty.clear()
            await self.clock.sleep(BURST)  # gather a burst of changes into one pass
            try:
                await self.nodes.check()
                await self.schedule_once()
                if self.clock.monotonic() - last_prune > PRUNE_EVERY:
                    with deferrable():  # upkeep: never the space kept for stopping things
                        await self.repo.prune_events()
                        await self.store.compact(HISTORY_KEPT)
                    last_prune = self.clock.monotonic()
            except StoreError as e:  # a full disk: said once per pass in one line, retried
                log.warning("scheduling pass failed: %s; the next pass retries", e)
            except Exception:  # the loop must survive one bad pass; the next one retries
                log.exception("scheduling pass failed")
