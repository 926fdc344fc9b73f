"""Rollouts: the versions of a workload, and whether the current one has been proven.

Every change to what a workload runs (an apply that changes its spec, ``elastin restart``,
``elastin job run``, ``elastin rollout undo``) makes a new *version*; the application's record
keeps the last ``HISTORY_KEPT`` of them per workload as ``Revision`` s (``elastin rollout
history``). A service moves to a new version by a rolling update (``UpdatePolicy``): the
scheduler (``scheduler/reconcile.py``) starts new instances and stops old ones within the
policy's bounds, counting a new instance only once it is ``ready``; the server's applier
watches ``verdict`` and marks the version ``stable`` when it is proven, or ``failed`` when it
is not within ``healthy_deadline`` — and then, with ``auto_revert``, makes the last stable
version current again (``revert_target``).

Pure: data in, verdicts out. ``now`` is the server's clock (``Clock.time()``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from elastin.model.cluster import Allocation
from elastin.model.codec import to_data
from elastin.model.workload import UpdatePolicy, Workload

HISTORY_KEPT = 10
CRASH_RESTARTS = 3
"""A new instance that restarted this many times without becoming ready fails its rollout at
once (a crash loop need not wait for the deadline)."""

RevisionState = Literal["rolling", "stable", "failed", "superseded"]
Cause = Literal["apply", "restart", "run", "undo", "revert"]


@dataclass(frozen=True)
class Revision:
    """One version of a workload: its spec, why it was made and how its rollout went.

    ``state``: ``rolling`` until proven, ``stable`` once every instance ran it ready,
    ``failed`` (``message`` says why; ``reverted_to`` the version made current instead, 0 if
    none), ``superseded`` when a newer version came before it was proven. ``since``: when it
    last became current or its service was scaled — failed instances from before no longer
    hold their index (the scheduler tries those slots again). ``generation``: the record's
    generation that made it (a wait started from a generation reports a rollback that came
    after). ``promoted_at``: when its canaries were promoted (the rest of the rollout's
    deadline counts from then).
    """

    version: int
    workload: Workload
    created_at: float
    cause: Cause = "apply"
    state: RevisionState = "rolling"
    message: str = ""
    reverted_to: int = 0
    finished_at: float = 0.0
    since: float = 0.0
    generation: int = 0
    promoted_at: float = 0.0

    @property
    def promoted(self) -> bool:
        """Whether ``elastin rollout promote`` let its rollout go on past the canaries."""
        return self.promoted_at > 0

    @property
    def started_at(self) -> float:
        """Where its rollout's ``healthy_deadline`` counts from."""
        return max(self.created_at, self.since, self.promoted_at)


# what a workload's running instances never see: changing it needs no new instances
# (the mesh is rebuilt from the applied spec; the autoscaler reads its policy from it)
NOT_IN_INSTANCES = ("replicas", "mesh", "autoscale")


def fingerprint(w: Workload) -> str:
    """A hash of everything that needs new instances when it changes (not the replica count,
    the mesh policy nor ``autoscale:``): two specs with one fingerprint are one version.
    Compare the fingerprints of two specs decoded by the same code (``next_record`` does): a
    field added to the spec in a later release changes every hash, so a hash stored by an
    earlier one says nothing about whether the spec changed."""
    data = to_data(w)
    for key in NOT_IN_INSTANCES:
        data.pop(key, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def needs_new_instances(prev: Workload | None, w: Workload) -> bool:
    """Whether running ``w`` where ``prev`` ran takes new instances (a new version): the one
    rule for the apply diff and the record (``server.apps``)."""
    return prev is None or fingerprint(prev) != fingerprint(w)


def with_policy_of(w: Workload, now: Workload) -> Workload:
    """``w``'s instances with what ``now`` sets beside them (the replica count, the mesh and
    autoscale policies): going back to an old version runs its instances, not the policy of
    its time."""
    return replace(w, **{key: getattr(now, key) for key in NOT_IN_INSTANCES})


def effective_policy(w: Workload) -> UpdatePolicy:
    """The update policy as applied: a service with a fixed port is replaced stop-first
    (no surge, one instance unavailable at a time): two instances cannot hold one port."""
    if any(p.port for p in w.ports):
        return replace(w.update, max_surge=0, max_unavailable=max(1, w.update.max_unavailable))
    return w.update


def stop_first(w: Workload) -> bool:
    """Whether ``w`` is replaced stop-first because it has a fixed port."""
    return any(p.port for p in w.ports)


def live(a: Allocation) -> bool:
    return a.desired == "run" and not a.terminal


def ready(a: Allocation, w: Workload, now: float) -> bool:
    """Whether instance ``a`` of ``w`` counts as available: running, healthy when ``w`` has a
    check, and so for at least ``min_healthy_time`` seconds."""
    if a.status != "running" or a.desired != "run" or not a.ready_at:
        return False
    if w.health is not None and a.healthy is not True:
        return False
    return now - a.ready_at >= w.update.min_healthy_time


def serving(a: Allocation) -> bool:
    """Whether an old instance is still serving (running and not known unhealthy)."""
    return live(a) and a.status == "running" and a.healthy is not False


@dataclass(frozen=True)
class Verdict:
    """Where the rollout of version ``version`` stands: ``rolling`` (``waiting_promotion``
    when canaries are up and wait for ``elastin rollout promote``), ``complete`` or
    ``failed`` (``message`` says why)."""

    state: Literal["rolling", "complete", "failed"]
    message: str = ""
    ready: int = 0
    desired: int = 0
    old: int = 0  # live instances of other versions
    waiting_promotion: bool = False


def _why_not_ready(a: Allocation, w: Workload) -> str:
    if a.status == "failed":
        return f"{a.label} failed: {a.reason or 'restarts exhausted'}"
    if a.restarts:
        why = f" ({a.reason})" if a.reason else ""
        return f"{a.label} restarted {a.restarts} time(s){why}"
    if a.status == "running" and w.health is not None and a.healthy is not True:
        return f"{a.label} is not healthy{': ' + a.reason if a.reason else ''}"
    if a.status == "pending":
        return f"{a.label} is pending{': ' + a.reason if a.reason else ''}"
    return f"{a.label} is {a.status}"


def verdict(
    w: Workload,
    version: int,
    allocs: Iterable[Allocation],
    *,
    started_at: float,
    now: float,
    promoted: bool = True,
    rolling: bool = True,
    since: float = 0.0,
) -> Verdict:
    """The rollout of ``w`` at ``version`` (its allocations ``allocs``; others ignored).
    An instance of the version that failed (its restarts ran out) since ``since`` fails it.
    ``rolling``: the version is still to be proven — only then does a crash-looping new
    instance or the deadline fail it; a proven version short of instances (after a scale)
    is ``rolling`` until they are ready."""
    mine = [a for a in allocs if a.workload == w.name]
    cur = [a for a in mine if a.spec_version == version and a.desired == "run"]
    old = [a for a in mine if a.spec_version != version and live(a)]
    desired = w.replicas
    n_ready = sum(1 for a in cur if ready(a, w, now))
    if n_ready >= desired and not old:
        return Verdict("complete", "", n_ready, desired, 0)
    for a in cur:
        if a.status == "failed" and a.index < desired and a.updated_at >= since:
            return Verdict("failed", _why_not_ready(a, w), n_ready, desired, len(old))
    canaries = min(w.update.canary, w.replicas)
    waiting = rolling and canaries > 0 and not promoted and bool(old) and n_ready >= canaries
    if not rolling or waiting:
        return Verdict("rolling", "", n_ready, desired, len(old), waiting)
    for a in cur:
        if a.restarts >= CRASH_RESTARTS and not ready(a, w, now) and live(a):
            why = _why_not_ready(a, w)
            return Verdict("failed", f"{why} without staying up", n_ready, desired, len(old))
    if now - started_at > w.update.healthy_deadline:
        laggards = [a for a in cur if live(a) and not ready(a, w, now)]
        detail = "; ".join(_why_not_ready(a, w) for a in laggards[:3])
        msg = (
            f"{n_ready} of {desired} new instance(s) ready after "
            f"{w.update.healthy_deadline:g}s (healthy_deadline)"
        )
        msg += f": {detail}" if detail else ""
        return Verdict("failed", msg, n_ready, desired, len(old))
    return Verdict("rolling", "", n_ready, desired, len(old))


def next_ready_due(w: Workload, allocs: Iterable[Allocation], now: float) -> float | None:
    """The earliest time one of ``w``'s running instances becomes ready by outliving
    ``min_healthy_time`` (None: none is about to): a blocking wait must wake then, as no
    write happens at that moment."""
    due = [
        a.ready_at + w.update.min_healthy_time
        for a in allocs
        if a.workload == w.name and a.status == "running" and a.ready_at and a.desired == "run"
    ]
    later = [t for t in due if t > now]
    return min(later) if later else None


def current(history: Sequence[Revision], version: int) -> Revision | None:
    for r in reversed(history):
        if r.version == version:
            return r
    return None


def revert_target(history: Sequence[Revision], failed_version: int) -> Revision | None:
    """The version to go back to when ``failed_version`` fails: the newest stable one."""
    for r in reversed(history):
        if r.version != failed_version and r.state == "stable":
            return r
    return None


def record(history: Sequence[Revision], rev: Revision) -> tuple[Revision, ...]:
    """``history`` with ``rev`` added (a rolling one before it is superseded), the oldest
    dropped beyond ``HISTORY_KEPT``."""
    out = [
        replace(r, state="superseded", finished_at=rev.created_at) if r.state == "rolling" else r
        for r in history
    ]
    out.append(rev)
    return tuple(out[-HISTORY_KEPT:])


def update(history: Sequence[Revision], version: int, **changes: object) -> tuple[Revision, ...]:
    """``history`` with the newest revision of ``version`` changed."""
    out = list(history)
    for i in range(len(out) - 1, -1, -1):
        if out[i].version == version:
            out[i] = replace(out[i], **changes)  # type: ignore[arg-type]
            break
    return tuple(out)
