"""Vertical scaling, wired: resize an allocation in place, and the recommender loop.

``plan_resize`` (pure) decides what a new cpu/memory request for one allocation means on a
snapshot: ``InPlace`` when its node has room for it (the node's capacity minus the requests of
its other live allocations), else ``Move`` to a node that has (ready, the workload's kind, its
constraints, its fixed ports free; the one with the most memory left), else ``NoRoom``. An
in-place resize changes the allocation's ``resources`` in the store; the scheduler's accounting
(the nodes' allocated and free totals, the R/C/A terms) reads them from there, and the node's
agent, woken by its allocation watch, applies the new limits to the running instance's cgroup
(same pid: docs/drivers.md "Resizing"). A move is an ordinary plan (``plan_writes``): a new
allocation with the new resources placed on the other node, the old one stopped (drained
first, like any stop).

``VerticalScaler`` is the server's room for it:

- ``resize(alloc_id, resources)`` (``POST /v1/allocations/{id}/resize``) commits one, guarded
  by the allocation's ``mod_rev`` (retried when something moved);
- ``run`` is the loop: every second it feeds each service whose ``autoscale.vertical.mode`` is
  not ``off`` a ``Recommender`` (``elastin.autoscale.vertical``) from the server's one-second
  windows (``Telemetry.windows``: every instance's cpu and memory), raises the memory
  recommendation at once on an OOM kill (the agents' ``alloc.oom_killed`` events), and in
  ``auto`` mode resizes each running instance (or one waiting to restart, after an OOM kill)
  whose request lies outside the recommendation's bounds to its target (memory in whole MiB)
  — at most once per ``AUTO_EVERY`` seconds per instance, but at once after an OOM kill (the
  times of the allocations that are gone are forgotten). A resize the agent refuses (the
  instance uses more memory than the new limit) comes back in its report (``resize_refused``,
  ``elastin.server.reports``): the allocation's resources are put back to what the instance
  runs with, so the accounting stays true and ``auto`` tries again ``AUTO_EVERY`` later;
- ``recommendations(ref)`` (``GET /v1/recommendations``, ``elastin recommend``): per service
  the recommendation, the request (the spec's and each instance's) and the use now.

Recommenders live in the server's memory only (as the windows do): a restarted server starts
them again from the samples that come.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from elastin.autoscale.vertical import Recommender, VerticalRecommendation
from elastin.clock import SYSTEM, Clock
from elastin.model.cluster import Allocation, EventSpec, Node
from elastin.model.resources import Resources, describe_resize
from elastin.model.units import format_size
from elastin.model.workload import Vertical, Workload
from elastin.scheduler import ClusterState, Plan, plan_writes
from elastin.scheduler.core import constraint_ok, static_ports
from elastin.server.applier import to_cluster_state
from elastin.server.errors import Conflict, Invalid, NotFound
from elastin.server.repo import EVENTS, Repo
from elastin.server.telemetry import Telemetry
from elastin.server.waits import Changes
from elastin.store.base import CompactedError, StoreError

log = logging.getLogger("elastin.server")

AUTO_EVERY = 60.0  # seconds between two automatic resizes of one instance (not after an OOM)
INTERVAL = 1.0  # seconds between two passes of the loop
_TRIES = 5
MIB = 1024 * 1024
MIN_MEMORY = 4 * MIB  # the spec's (and the task driver's) least


@dataclass(frozen=True)
class InPlace:
    """The allocation's node has room: ``alloc`` is the allocation with its new resources."""

    alloc: Allocation


@dataclass(frozen=True)
class Move:
    """The node has no room; ``node`` has: ``new`` is placed there, ``old`` stopped."""

    old: Allocation
    new: Allocation
    node: Node
    reason: str


@dataclass(frozen=True)
class NoRoom:
    """Neither its node nor another has room: nothing changes."""

    reason: str


def _free(state: ClusterState, node: Node, but: str) -> Resources:
    used = Resources()
    for a in state.allocs_by_node.get(node.id, ()):
        if a.id != but:
            used = used + a.resources
    return node.capacity - used


def _workload(state: ClusterState, a: Allocation) -> Workload | None:
    entry = state.apps.get(a.app)
    return entry[0].workload(a.workload) if entry else None


def _ports_free(state: ClusterState, node: Node, want: frozenset[int]) -> bool:
    if not want:
        return True
    for other in state.allocs_by_node.get(node.id, ()):
        w = _workload(state, other)
        if w is not None and want & static_ports(w.ports):
            return False
    return True


def check_request(resources: Resources) -> None:
    """``Invalid`` for a request no instance can run with."""
    if resources.cpu < 1:
        raise Invalid(f"cpu must be at least 1m, not {resources.cpu}m")
    if resources.memory < MIN_MEMORY:
        raise Invalid(
            f"memory must be at least 4Mi, not {format_size(resources.memory)}",
            hint="give memory as 64Mi, 1Gi, ...",
        )


def plan_resize(
    state: ClusterState, alloc_id: str, resources: Resources, new_id: Callable[[], str]
) -> InPlace | Move | NoRoom:
    """What resizing ``alloc_id`` to ``resources`` (cpu and memory; disk is kept) means on
    ``state`` (see the module). ``NotFound``/``Conflict`` when it is unknown or not live."""
    a = state.allocations.get(alloc_id)
    if a is None:
        raise NotFound(f"no allocation {alloc_id!r}", hint="`elastin ps` lists them")
    if a.desired != "run" or a.terminal or not a.node_id:
        what = "pending" if not a.node_id and not a.terminal else a.status
        raise Conflict(
            f"allocation {a.label} is {what} (desired {a.desired}): only a placed, live "
            "instance can be resized",
            hint="resize a running instance (`elastin ps`)",
        )
    want = Resources(resources.cpu, resources.memory, a.resources.disk)
    node = state.nodes.get(a.node_id)
    if node is not None and want.fits_in(_free(state, node, a.id)):
        return InPlace(replace(a, resources=want))
    here = node.name if node is not None else a.node_id
    short = ", ".join(want.shortfall(_free(state, node, a.id))) if node else "node gone"
    w = _workload(state, a)
    fixed = static_ports(w.ports) if w is not None else frozenset()
    best: tuple[int, Node] | None = None
    for n in sorted(state.nodes.values(), key=lambda n: n.id):
        if n.id == a.node_id or n.status != "ready" or a.kind not in n.drivers:
            continue
        if w is not None and not all(constraint_ok(c, n.attrs()) for c in w.constraints):
            continue
        free = _free(state, n, a.id)
        if not want.fits_in(free) or not _ports_free(state, n, fixed):
            continue
        left = (free - want).memory
        if best is None or left > best[0]:
            best = (left, n)
    change = describe_resize(a.resources, want)
    if best is None:
        return NoRoom(
            f"{a.label}: {change} fits neither on its node {here} (short of {short}) nor on "
            "any other ready node"
        )
    target = best[1]
    new = replace(
        a,
        id=new_id(),
        node_id=target.id,
        resources=want,
        status="pending",
        reason="",
        restarts=0,
        exit_code=None,
        pid=0,
        ports=(),
        healthy=None,
        ready_at=0.0,
    )
    why = f"resized ({change}): no room on {here} (short of {short}); moved to {target.name}"
    return Move(a, new, target, why)


@dataclass
class _Service:
    policy: Vertical
    recommender: Recommender
    fed: int = 0  # the last second of the windows fed to it
    oom: bool = False  # an OOM kill since the last auto pass: act at once


class VerticalScaler:
    """The server's room for vertical scaling (see the module)."""

    def __init__(
        self,
        repo: Repo,
        changes: Changes,
        telemetry: Telemetry,
        new_id: Callable[[], str],
        clock: Clock = SYSTEM,
    ) -> None:
        self.repo = repo
        self.changes = changes
        self.telemetry = telemetry
        self.new_id = new_id
        self.clock = clock
        self.services: dict[tuple[str, str], _Service] = {}
        self._oom_labels: list[str] = []  # allocations OOM-killed since the last pass
        self._last_resize: dict[str, float] = {}  # allocation -> monotonic time

    # resizing ------------------------------------------------------------------------
    async def resize(self, alloc_id: str, resources: Resources, why: str = "") -> dict[str, Any]:
        """Resize one allocation (in place, or moved; see ``plan_resize``): what was done."""
        check_request(resources)
        for _ in range(_TRIES):
            snap = await self.repo.snapshot()
            state = to_cluster_state(snap, self.clock.time())
            decision = plan_resize(state, alloc_id, resources, self.new_id)
            if isinstance(decision, NoRoom):
                raise Conflict(
                    decision.reason,
                    hint="free room (stop or scale down something) or ask for less",
                )
            suffix = f" ({why})" if why else ""
            if isinstance(decision, InPlace):
                old = state.allocations[alloc_id]
                new = replace(decision.alloc, updated_at=self.clock.time())
                change = describe_resize(old.resources, new.resources)
                event: EventSpec = ("alloc.resize", old.label, f"{change} in place{suffix}", "info")
                rev = await self.repo.commit(
                    compares=[self.repo.compare_alloc(alloc_id, snap.allocs[alloc_id][1])],
                    allocs=[new],
                    events=[event],
                )
                if rev is None:
                    continue
                self.changes.touch_nodes({new.node_id}, rev)
                self.changes.committed(rev)
                self._last_resize[alloc_id] = self.clock.monotonic()
                return {
                    "allocation": alloc_id,
                    "action": "in_place",
                    "node": new.node_id,
                    "from": _res(old.resources),
                    "resources": _res(new.resources),
                    "message": f"{old.label}: {change} in place{suffix}",
                }
            plan = Plan(base_rev=state.revision, place=[decision.new])
            plan.stop.append((decision.old.id, decision.reason + suffix))
            writes = plan_writes(state, plan, self.clock.time())
            rev = await self.repo.commit(
                compares=[self.repo.compare_alloc(i, snap.allocs[i][1]) for i in writes.read],
                allocs=list(writes.allocs.values()),
                events=[
                    ("alloc.resize", decision.old.label, decision.reason + suffix, "info"),
                    *writes.events,
                ],
            )
            if rev is None:
                continue
            self.changes.touch_nodes({decision.old.node_id, decision.node.id}, rev)
            self.changes.committed(rev)
            self._last_resize[decision.new.id] = self.clock.monotonic()
            return {
                "allocation": alloc_id,
                "action": "moved",
                "to": decision.new.id,
                "node": decision.node.id,
                "from": _res(decision.old.resources),
                "resources": _res(decision.new.resources),
                "message": f"{decision.old.label}: {decision.reason}{suffix}",
            }
        raise Conflict(
            f"allocation {alloc_id} kept changing while it was being resized",
            hint="try again",
        )

    # the recommenders ----------------------------------------------------------------
    def _sync_services(self, workloads: Mapping[tuple[str, str], Workload]) -> None:
        for key, w in workloads.items():
            policy = w.autoscale.vertical if w.autoscale is not None else None
            have = self.services.get(key)
            if policy is None or policy.mode == "off":
                self.services.pop(key, None)
            elif have is None or have.policy != policy:
                self.services[key] = _Service(policy, Recommender(policy, self.clock))
        for key in [k for k in self.services if k not in workloads]:
            del self.services[key]

    def _feed(self, key: tuple[str, str], svc: _Service) -> None:
        """The seconds of the windows not fed yet: each instance's cpu and memory."""
        now = int(self.clock.time())
        last = min(max(1, now - svc.fed), self.telemetry.windows.seconds)
        data = self.telemetry.windows.service(key[0], key[1], last=last)
        times = data["times"]
        for replica in data["replicas"].values():
            cpu = replica.get("cpu", {}).get("series", [])
            mem = replica.get("memory", {}).get("series", [])
            for t, c, m in zip(times, cpu, mem, strict=False):
                if t <= svc.fed or (c is None and m is None):
                    continue
                svc.recommender.observe(c, None if m is None else int(m), at=float(t))
        svc.fed = now

    async def watch_ooms(self) -> None:
        """Follow the events the agents report (a store watch, no polling): each
        ``alloc.oom_killed`` is noted for the next pass (``_ooms``), until cancelled."""
        while True:
            from_rev = await self.repo.store.revision() + 1
            try:
                async for ev in self.repo.store.watch(EVENTS, from_rev):
                    value = ev.value if isinstance(ev.value, dict) else {}
                    if ev.type == "put" and value.get("type") == "alloc.oom_killed":
                        self._oom_labels.append(str(value.get("subject", "")))
            except CompactedError:  # fell behind the history kept: from now on
                continue

    def _ooms(self, by_label: Mapping[str, Allocation]) -> None:
        """The OOM kills noted since the last pass raise their service's memory at once."""
        labels, self._oom_labels = self._oom_labels, []
        usage = self.telemetry.usage()
        for label in labels:
            a = by_label.get(label)
            svc = self.services.get((a.app, a.workload)) if a is not None else None
            if a is None or svc is None:
                continue
            u = usage.get(a.id)
            svc.recommender.oom(a.resources.memory, u.memory if u is not None else 0)
            svc.oom = True

    async def step(self) -> list[dict[str, Any]]:
        """One pass: feed the recommenders, note OOM kills, resize in ``auto`` mode; the
        resizes done."""
        allocs, _ = await self.repo.list_allocs()
        apps = await self.repo.list_apps()
        workloads = {
            (rec.app.name, w.name): w
            for rec in apps
            for w in rec.effective().workloads
            if w.type == "service"
        }
        self._sync_services(workloads)
        for key, svc in self.services.items():
            self._feed(key, svc)
        self._ooms({a.label: a for a in allocs})
        live = {a.id for a in allocs if a.desired == "run" and not a.terminal}
        for gone in [i for i in self._last_resize if i not in live]:  # stopped, moved, deleted
            del self._last_resize[gone]
        done = []
        now = self.clock.monotonic()
        for key, svc in self.services.items():
            oom, svc.oom = svc.oom, False
            if svc.policy.mode != "auto":
                continue
            rec = svc.recommender.recommend()
            if rec is None:
                continue
            for a in allocs:
                if (a.app, a.workload) != key or a.desired != "run" or not a.node_id:
                    continue
                if a.status not in ("running", "starting"):  # starting: in a restart delay
                    continue
                if not rec.outside(a.resources):
                    continue
                if not oom and now - self._last_resize.get(a.id, -AUTO_EVERY) < AUTO_EVERY:
                    continue
                self._last_resize[a.id] = now  # also when it fails: tried again later
                try:
                    target = whole_mib(rec.target)
                    done.append(await self.resize(a.id, target, f"auto: {rec.reason}"))
                except (Conflict, NotFound, Invalid) as e:
                    log.info("%s: vertical auto resize not done: %s", a.label, e.message)
        return done

    async def run(self, interval: float = INTERVAL) -> None:
        """The loop: ``step`` every ``interval`` seconds (and ``watch_ooms`` beside it),
        until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.watch_ooms())
            await self._loop(interval)

    async def _loop(self, interval: float) -> None:
        while True:
            try:
                await self.step()
            except StoreError as e:
                log.warning("vertical pass failed: %s; the next pass retries", e)
            except Exception:  # the loop must survive one bad pass
                log.exception("vertical pass failed")
            await self.clock.sleep(interval)

    # views ---------------------------------------------------------------------------
    def recommendation(self, app: str, workload: str) -> VerticalRecommendation | None:
        svc = self.services.get((app, workload))
        return svc.recommender.recommend() if svc is not None else None

    async def recommendations(self, ref: str = "") -> list[dict[str, Any]]:
        """Per service (or only ``ref``: ``name`` or ``app/name``): mode, recommendation,
        request and use now, each instance's request and use (``elastin recommend``)."""
        allocs, _ = await self.repo.list_allocs()
        apps = await self.repo.list_apps()
        usage = self.telemetry.usage()
        out = []
        for rec in sorted(apps, key=lambda r: r.app.name):
            for w in rec.effective().workloads:
                if w.type != "service":
                    continue
                if ref and ref not in (w.name, f"{rec.app.name}/{w.name}"):
                    continue
                out.append(self._service_view(rec.app.name, w, allocs, usage))
        if ref and not out:
            raise NotFound(f"no service {ref!r}", hint="`elastin ps` lists the services")
        return out

    def _service_view(
        self, app: str, w: Workload, allocs: list[Allocation], usage: Mapping[str, Any]
    ) -> dict[str, Any]:
        policy = w.autoscale.vertical if w.autoscale is not None else None
        mode = policy.mode if policy is not None else "off"
        rec = self.recommendation(app, w.name) if mode != "off" else None
        instances = []
        for a in sorted(allocs, key=lambda a: a.index):
            if a.app != app or a.workload != w.name or a.desired != "run" or a.terminal:
                continue
            u = usage.get(a.id)
            instances.append(
                {
                    "id": a.id,
                    "name": a.name,
                    "status": a.status,
                    "request": _res(a.resources),
                    "use": {"cpu": u.cpu, "memory": u.memory} if u is not None else None,
                    "outside": rec.outside(a.resources) if rec is not None else None,
                }
            )
        return {
            "app": app,
            "service": w.name,
            "mode": mode,
            "request": _res(w.resources),
            "recommendation": None
            if rec is None
            else {
                "target": _res(rec.target),
                "lower": _res(rec.lower),
                "upper": _res(rec.upper),
                "reason": rec.reason,
            },
            "instances": instances,
        }


def whole_mib(r: Resources) -> Resources:
    """``r`` with its memory rounded up to a whole MiB: the kernel keeps limits in pages
    anyway, and a request reads better as ``45Mi`` than as 46,826,876 bytes."""
    return Resources(r.cpu, -(-r.memory // MIB) * MIB, r.disk)


def _res(r: Resources) -> dict[str, int]:
    return {"cpu": r.cpu, "memory": r.memory}


__all__ = [
    "AUTO_EVERY",
    "InPlace",
    "Move",
    "NoRoom",
    "VerticalScaler",
    "check_request",
    "plan_resize",
]
