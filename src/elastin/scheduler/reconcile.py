"""Reconciliation: compare one application's desired state with its allocations.

``diff_app`` says what must stop, what is lost and which instances need a node; it does not
pick nodes (``core`` does).

Any allocation that is not terminal and sits on a node that is down or gone is *lost*
(``node <name> is down``): it counts as terminal below, so a service's index is filled again
and a job's run is placed again (a lost run is not a failure). The rules, per workload (spec
version ``v`` = the app's current version of that workload):

Services want instances with index ``0 .. replicas-1`` running version ``v``.
  * A *live* allocation (``desired="run"`` and not terminal) holds its index within its
    version. Terminal ``complete``, ``stopped`` and ``lost`` allocations are ignored.
  * A ``failed`` allocation of version ``v`` (the agent exhausted its restart policy) also
    holds its index: it is not replaced until the spec changes (or the version becomes
    current again, or the service is scaled: ``since``), so a broken command fails once and
    stays visible with its reason instead of looping.
  * A live allocation with ``index >= replicas`` is stopped ("scaled down"); a second live
    allocation of one version on the same index is stopped ("duplicate").
  * A live pending allocation (``node_id == ""``) is retried: it becomes a request that
    carries the existing allocation.
  * Live allocations of older versions are replaced by a *rolling update* within the
    service's ``UpdatePolicy`` (``model/rollout.py``): at most ``replicas + max_surge``
    instances live, at least ``replicas - max_unavailable`` available (an old instance that
    is running and not unhealthy, or a new one that is ``ready``). Old instances that are not
    serving are stopped at once. New instances take the lowest indices the new version does
    not hold yet; old ones go first where a ready new instance holds their index. While
    canaries await promotion (``ClusterState.held``) only ``canary`` new instances are
    started and no old one is stopped. A service with a fixed port is replaced stop-first
    (no surge), and an old instance still stopping counts as live until it has stopped, so
    the new one never races it for the port.

Jobs want ``completions`` successful runs of version ``v``, at most ``parallelism`` live at a
time.
  * ``complete`` allocations of version ``v`` are done (their index is a filled slot).
  * ``failed`` allocations of version ``v`` are counted; when more than ``retries`` have
    failed the job has failed and nothing new is placed (the failures keep their reasons).
  * Live allocations of an older version are stopped; live ones beyond the completions
    still missing are stopped ("job complete").
  * New runs take the lowest completion slots that are neither done nor live.

Allocations of a workload that is no longer in the application are stopped ("workload
removed"); allocations of an application that no longer exists are stopped ("application
deleted"). Terminal allocations are never stopped again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from elastin.model.cluster import Allocation, Node
from elastin.model.rollout import effective_policy, ready, serving, stop_first
from elastin.model.workload import Application, Workload


@dataclass(slots=True)
class Request:
    """One instance that needs a node: new (``existing is None``) or a pending retry."""

    app: str
    workload: Workload
    index: int
    version: int
    existing: Allocation | None = None
    attempt: int = 0


@dataclass(slots=True)
class AppDiff:
    stops: list[tuple[str, str]]
    requests: list[Request]
    lost: list[tuple[str, str]]


def _live(a: Allocation) -> bool:
    return a.desired == "run" and not a.terminal


def _node_problem(a: Allocation, nodes: Mapping[str, Node]) -> str:
    """Why ``a``'s node can no longer run it, or "" when the node is fine (or none yet)."""
    if not a.node_id:
        return ""
    node = nodes.get(a.node_id)
    if node is None:
        return f"node {a.node_id} is gone"
    if node.status != "ready":
        return f"node {node.name} is down"
    return ""


def diff_app(
    name: str,
    entry: tuple[Application, Mapping[str, int]] | None,
    allocs: Sequence[Allocation],
    nodes: Mapping[str, Node],
    *,
    now: float = 0.0,
    held: frozenset[tuple[str, str]] = frozenset(),
    since: Mapping[tuple[str, str], float] | None = None,
) -> AppDiff:
    """What must stop, what is lost and what needs a node for application ``name``
    (``entry is None``: the application was deleted). ``now`` is the snapshot's time (a new
    instance is ready after ``min_healthy_time``); ``held`` the workloads whose canaries
    await promotion; ``since`` per workload, when its version became current or it was
    scaled (a failed instance from before no longer holds its slot)."""
    stops: list[tuple[str, str]] = []
    requests: list[Request] = []
    lost: list[tuple[str, str]] = []
    if any(a.node_id and not a.terminal for a in allocs):
        kept = []
        for a in allocs:
            problem = "" if a.terminal else _node_problem(a, nodes)
            if problem:
                lost.append((a.id, problem))
            else:
                kept.append(a)
        allocs = kept
    if entry is None:
        stops.extend((a.id, "application deleted") for a in allocs if a.desired == "run")
        return AppDiff(stops, requests, lost)
    app, versions = entry
    by_workload: dict[str, list[Allocation]] = {}
    for a in allocs:
        by_workload.setdefault(a.workload, []).append(a)
    for wname, group in by_workload.items():
        if app.workload(wname) is None:
            reason = f"workload {wname} removed from application {name}"
            stops.extend((a.id, reason) for a in group if _live(a))
    for w in app.workloads:
        version = versions.get(w.name, 0)
        group = by_workload.get(w.name, [])
        if w.type == "service":
            hold = (name, w.name) in held
            fresh = (since or {}).get((name, w.name), 0.0)
            _diff_service(name, w, version, group, stops, requests, now, hold, fresh)
        else:
            _diff_job(name, w, version, group, stops, requests)
    return AppDiff(stops, requests, lost)


def _rank(a: Allocation) -> tuple[int, int, str]:
    """Which of two live duplicates to keep: running first, then placed, then the older id."""
    return (0 if a.status == "running" else 1, 0 if a.node_id else 1, a.id)


def _diff_service(
    app: str,
    w: Workload,
    version: int,
    group: Sequence[Allocation],
    stops: list[tuple[str, str]],
    requests: list[Request],
    now: float = 0.0,
    hold: bool = False,
    since: float = 0.0,
) -> None:
    held: dict[int, Allocation] = {}  # index -> the current version's instance
    pending: list[Allocation] = []
    old: list[Allocation] = []
    stopping = 0  # old instances asked to stop that have not stopped yet
    for a in sorted(group, key=_rank):
        if a.status == "failed" and a.spec_version == version and a.desired == "run":
            if a.index < w.replicas and a.updated_at >= since:
                held.setdefault(a.index, a)
            continue
        if not _live(a):
            if a.desired == "stop" and not a.terminal and a.spec_version != version:
                stopping += 1
            continue
        if a.index >= w.replicas:
            stops.append((a.id, f"scaled down to {w.replicas} replicas"))
            continue
        if a.spec_version != version:
            old.append(a)
            continue
        if a.index in held:
            stops.append((a.id, f"duplicate of {held[a.index].id}"))
            continue
        held[a.index] = a
        if not a.node_id:
            pending.append(a)
    for a in pending:
        requests.append(Request(app, w, a.index, version, a))
    missing = [i for i in range(w.replicas) if i not in held]
    if not old:
        requests.extend(Request(app, w, i, version) for i in missing)
        return
    # a rolling update from the old instances to ``version``
    change = f"spec changed (version {old[0].spec_version} -> {version})"
    policy = effective_policy(w)
    still = [a for a in old if serving(a)]
    for a in old:
        if not serving(a):
            stops.append((a.id, f"{change}; it was not serving"))
    ready_new = {i for i, a in held.items() if ready(a, w, now)}
    if hold:  # canaries only, nothing old stops until `elastin rollout promote`
        room = max(0, min(w.update.canary, w.replicas) - len(held))
        requests.extend(Request(app, w, i, version) for i in missing[:room])
        return
    if any(a.status == "failed" for a in held.values()):
        return  # the new version failed: it is rolled back, nothing more moves to it
    available = len(still) + len(ready_new)
    can_stop = max(0, available - (w.replicas - policy.max_unavailable))
    # old instances whose index a ready new one holds go first, then the highest indices
    still.sort(key=lambda a: (a.index not in ready_new, -a.index))
    for a in still[:can_stop]:
        stops.append((a.id, f"{change}; replaced"))
    live_now = len(still) - can_stop + len(held)
    if stop_first(w):  # an old instance holds its fixed port until it has stopped
        live_now += stopping + min(can_stop, len(still))
    room = max(0, w.replicas + policy.max_surge - live_now)
    requests.extend(Request(app, w, i, version) for i in missing[:room])


def _diff_job(
    app: str,
    w: Workload,
    version: int,
    group: Sequence[Allocation],
    stops: list[tuple[str, str]],
    requests: list[Request],
) -> None:
    done: set[int] = set()
    failed = 0
    live: list[Allocation] = []
    for a in sorted(group, key=lambda a: (a.index, _rank(a))):
        if a.spec_version != version:
            if _live(a):
                stops.append((a.id, f"spec changed (version {a.spec_version} -> {version})"))
            continue
        if a.status == "complete":
            done.add(a.index)
        elif a.status == "failed":
            failed += 1
        elif _live(a):
            live.append(a)
    missing = max(0, w.completions - len(done))
    busy: set[int] = set()
    kept: list[Allocation] = []
    for a in live:
        if a.index in done or a.index in busy or len(kept) >= missing:
            stops.append((a.id, "job complete" if a.index in done or not missing else "surplus"))
            continue
        busy.add(a.index)
        kept.append(a)
    for a in kept:
        if not a.node_id:
            requests.append(Request(app, w, a.index, version, a, a.attempt))
    if failed > w.retries:
        return  # the job failed: no new runs
    room = min(max(0, w.parallelism) - len(kept), missing - len(kept))
    index = 0
    while room > 0:
        if index not in done and index not in busy:
            requests.append(Request(app, w, index, version, attempt=failed))
            room -= 1
        index += 1
