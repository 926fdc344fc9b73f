"""The applier: runs the pure scheduler on a snapshot and commits its plan, Nomad's way.

``schedule_once`` takes a snapshot, asks ``elastin.scheduler.schedule`` for a plan, turns it
into writes with the pure ``plan_writes`` (the same function the scheduler's property tests
exercise) and commits them in one transaction guarded by the ``mod_rev`` of every allocation
whose current value the writes used. When something moved in between, the plan is re-checked
against a fresh snapshot (``check_plan``) and recomputed if it no longer holds.

``follow_rollouts`` (after each pass) watches every workload whose current version is still
``rolling`` (``model.rollout``): it marks the version ``stable`` once its rollout is complete
(a job: its runs completed), or ``failed`` when it is not — and then, with ``auto_revert``,
makes the last stable version current again, reusing its instances that still run — with an
event saying why either way. Those writes go through the application's record (compare-and-set)
and wake the next pass like any other change.

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
from dataclasses import replace

from elastin.clock import SYSTEM, Clock
from elastin.model.cluster import Allocation, EventSpec
from elastin.model.rollout import current, revert_target, verdict
from elastin.model.rollout import update as update_revision
from elastin.model.settled import settlement
from elastin.scheduler import (
    ClusterState,
    Plan,
    SchedulerOptions,
    check_plan,
    plan_writes,
    schedule,
)
from elastin.server.nodes import Nodes
from elastin.server.repo import AppRecord, Repo, Snapshot
from elastin.server.waits import Changes
from elastin.store.base import StateStore, StoreError, deferrable

log = logging.getLogger("elastin.server")

HISTORY_KEPT = 100_000  # store revisions of change history kept for watchers
PRUNE_EVERY = 60.0  # seconds between prunes of events and history
_TRIES = 5
BURST = 0.01  # seconds a kicked pass waits to gather a burst of changes


def held_for_promotion(rec: AppRecord) -> list[str]:
    """The workloads of ``rec`` whose canaries wait for ``elastin rollout promote``."""
    out = []
    for w in rec.app.workloads:
        rev = current(rec.history.get(w.name, ()), rec.versions.get(w.name, 0))
        if w.update.canary and rev is not None and rev.state == "rolling" and not rev.promoted:
            out.append(w.name)
    return out


def to_cluster_state(snap: Snapshot, now: float = 0.0) -> ClusterState:
    return ClusterState(
        revision=snap.revision,
        nodes={k: n for k, (n, _) in snap.nodes.items()},
        apps={k: (rec.effective(), dict(rec.versions)) for k, (rec, _) in snap.apps.items()},
        allocations={k: a for k, (a, _) in snap.allocs.items()},
        now=now,
        held=frozenset(
            (name, w) for name, (rec, _) in snap.apps.items() for w in held_for_promotion(rec)
        ),
        since={
            (name, w): rev.since
            for name, (rec, _) in snap.apps.items()
            for w, v in rec.versions.items()
            if (rev := current(rec.history.get(w, ()), v)) is not None
        },
    )


def rollout_step(
    rec: AppRecord, allocs: list[Allocation], now: float
) -> tuple[AppRecord, list[EventSpec]] | None:
    """The record after noting how its rolling versions went (None: nothing to note)."""
    events: list[EventSpec] = []
    out = rec
    for w in rec.app.workloads:
        if w.name in rec.stopped:
            continue
        version = out.versions.get(w.name, 0)
        history = out.history.get(w.name, ())
        rev = current(history, version)
        if rev is None or rev.state != "rolling":
            continue
        subject = f"{rec.app.name}/{w.name}"
        if w.type == "job":
            p = settlement(
                replace(rec.app, workloads=(w,)), (), allocs, versions={w.name: version}, now=now
            ).workloads[0]
            if p.state == "settling":
                continue
            state = "stable" if p.state == "settled" else "failed"
            hist = update_revision(history, version, state=state, message=p.reason, finished_at=now)
            out = replace(out, history={**out.history, w.name: hist})
            continue
        v = verdict(
            w,
            version,
            allocs,
            started_at=rev.started_at,
            now=now,
            promoted=rev.promoted,
            since=rev.since,
        )
        if v.state == "complete":
            hist = update_revision(history, version, state="stable", finished_at=now)
            out = replace(out, history={**out.history, w.name: hist})
            msg = f"version {version} is live: {v.ready}/{v.desired} instance(s) ready"
            events.append(("rollout.complete", subject, msg, "info"))
            continue
        if v.state != "failed":
            continue
        target = revert_target(history, version) if w.update.auto_revert else None
        hist = update_revision(
            history,
            version,
            state="failed",
            message=v.message,
            finished_at=now,
            reverted_to=target.version if target else 0,
        )
        if target is None:
            out = replace(out, history={**out.history, w.name: hist})
            why = "auto_revert is off" if not w.update.auto_revert else "no earlier version proved"
            msg = f"version {version} failed: {v.message}; not rolled back ({why})"
            events.append(("rollout.failed", subject, msg, "error"))
            continue
        hist = update_revision(hist, target.version, since=now)  # its old failures: history
        out = out.with_version(target.workload, target.version, hist)
        msg = f"version {version} failed: {v.message}; rolled back to version {target.version}"
        events.append(("rollout.failed", subject, msg, "error"))
    if out is rec:
        return None
    return replace(out, generation=rec.generation + 1), events


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
            state = to_cluster_state(snap, self.clock.time())
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
                state = to_cluster_state(snap, self.clock.time())
                if check_plan(plan, state):
                    plan = schedule(state, self.options, self.rng, self.new_id)
            log.warning("could not commit a plan after %d tries; the next pass retries", _TRIES)
            return None

    async def follow_rollouts(self) -> None:
        """Note how rolling versions went (``rollout_step``); a conflict waits for the next
        pass."""
        snap = await self.repo.snapshot()
        allocs = [a for a, _ in snap.allocs.values()]
        now = self.clock.time()
        for name, (rec, mod_rev) in snap.apps.items():
            step = rollout_step(rec, [a for a in allocs if a.app == name], now)
            if step is None:
                continue
            new, events = step
            rev = await self.repo.commit(
                compares=[self.repo.compare_app(name, mod_rev)], apps=[new], events=events
            )
            if rev is not None:
                for _, subject, msg, level in events:
                    (log.warning if level == "error" else log.info)("%s: %s", subject, msg)
                self.changes.committed(rev)

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
                await self.follow_rollouts()
                if self.clock.monotonic() - last_prune > PRUNE_EVERY:
                    with deferrable():  # upkeep: never the space kept for stopping things
                        await self.repo.prune_events()
                        await self.store.compact(HISTORY_KEPT)
                    last_prune = self.clock.monotonic()
            except StoreError as e:  # a full disk: said once per pass in one line, retried
                log.warning("scheduling pass failed: %s; the next pass retries", e)
            except Exception:  # the loop must survive one bad pass; the next one retries
                log.exception("scheduling pass failed")
