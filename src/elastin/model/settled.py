"""When a change has settled: the one definition the CLI, the SDK, the agent and the API use.

``settlement(app, stopped, allocs, versions=, history=, now=)`` looks at an application as
applied and its allocations and says, per workload and for the whole application, whether it
is still ``settling``, ``settled`` or ``failed``, and why. Only the workload's *current
version* counts (an older version's instances, a deleted application's runs of the same name
are history):

- a service is settled when its rollout is complete (``model.rollout.verdict``): ``replicas``
  instances of the current version ready — running, healthy where it has a check, and so for
  ``min_healthy_time`` — and no instance of another version left; it has failed when that
  rollout failed (a new instance failed or crash-looped, or the deadline passed; the record
  says so once the applier noted it, and whether it was rolled back). A rollout whose ready
  canaries await ``elastin rollout promote`` counts as settled, with a reason saying so;
- a job is settled when ``completions`` runs of the current version completed (exit 0); it
  has failed when more than ``retries`` runs failed and none is left running or pending;
- the application is failed when a workload failed, settled when every workload is settled.

``waiting`` is true when every instance not yet settled is pending with a reason (no feasible
node, waiting for a dependency): nothing moves until something else changes.

``workload_ready(workload, allocs)`` is what a dependency needs (``depends_on``): a job that
completed its completions, or a service with one running instance that is not unhealthy
(healthy, when it has a check).

Pure: data in, a verdict out.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from elastin.model.cluster import Allocation
from elastin.model.rollout import Revision, current, revert_target, verdict
from elastin.model.workload import Application, Workload

State = Literal["settling", "settled", "failed"]


@dataclass(frozen=True)
class WorkloadProgress:
    """Where one workload of an application stands."""

    name: str
    type: str  # service | job
    desired: int  # replicas (services) or completions (jobs); 0 when stopped
    running: int
    pending: int
    complete: int
    failed: int
    unhealthy: int  # running instances whose health check fails
    state: State
    reason: str = ""  # why it failed (or what it waits for)
    version: int = 0  # the current version
    ready: int = 0  # services: instances of the current version ready

    @property
    def summary(self) -> str:
        if self.type == "job":
            return f"{self.name} {self.complete}/{self.desired} done"
        return f"{self.name} {self.running}/{self.desired}"


@dataclass(frozen=True)
class Settlement:
    app: str
    state: State
    workloads: tuple[WorkloadProgress, ...]
    waiting: bool = False  # every unsettled instance is pending with a reason

    @property
    def summary(self) -> str:
        return ", ".join(w.summary for w in self.workloads)

    @property
    def done(self) -> bool:
        """Settled or failed: a wait for this application can end."""
        return self.state != "settling"


def _progress(
    w: Workload,
    stopped: bool,
    mine: Sequence[Allocation],
    version: int | None,
    history: Sequence[Revision],
    now: float,
    from_generation: int = 0,
) -> WorkloadProgress:
    if version is None:  # every allocation counts as the current version
        version = max((a.spec_version for a in mine), default=0)
    cur = [a for a in mine if a.spec_version == version]
    live_cur = [a for a in cur if not a.terminal]
    running = [a for a in live_cur if a.status == "running"]
    pending = sum(1 for a in live_cur if a.status == "pending")
    complete = sum(1 for a in cur if a.status == "complete")
    failed = sum(1 for a in cur if a.status == "failed")
    unhealthy = sum(1 for a in running if a.healthy is False)
    state: State
    reason = ""
    n_ready = 0
    if w.type == "job":
        desired = 0 if stopped else w.completions
        if complete >= desired:
            state = "settled"
        elif failed > w.retries and not live_cur:
            state = "failed"
            last = max((a for a in cur if a.status == "failed"), key=lambda a: a.updated_at)
            reason = f"{failed} run(s) failed ({w.retries} retries): {last.reason or 'failed'}"
        else:
            state = "settling"
    elif stopped:
        desired = 0
        state = "settled" if not running else "settling"
    else:
        desired = w.instances
        state, reason, n_ready = _service(w, version, mine, history, now, from_generation)
    return WorkloadProgress(
        name=w.name,
        type=w.type,
        desired=desired,
        running=len(running),
        pending=pending,
        complete=complete,
        failed=failed,
        unhealthy=unhealthy,
        state=state,
        reason=reason,
        version=version,
        ready=n_ready,
    )


def _service(
    w: Workload,
    version: int,
    mine: Sequence[Allocation],
    history: Sequence[Revision],
    now: float,
    from_generation: int,
) -> tuple[State, str, int]:
    """A running service's state, why, and its ready instances of ``version``."""
    rev = current(history, version)
    latest = history[-1] if history else None
    if (
        from_generation
        and latest is not None
        and latest is not rev
        and latest.state == "failed"
        and latest.generation >= from_generation
        and latest.reverted_to == version
    ):  # a version this wait is about failed and was rolled back
        msg = f"version {latest.version} failed: {latest.message}"
        return "failed", f"{msg}; rolled back to version {version}", 0
    rolling = rev is not None and rev.state == "rolling"
    v = verdict(
        w,
        version,
        mine,
        started_at=rev.started_at if rev else now,
        now=now,
        promoted=rev.promoted if rev else True,
        rolling=rolling,
        since=rev.since if rev else 0.0,
    )
    if rev is not None and rev.state == "failed":  # current, not rolled back
        return "failed", f"version {version} failed: {rev.message}", v.ready
    if v.state == "failed":
        reason = f"version {version} failed: {v.message}"
        target = revert_target(history, version) if w.update.auto_revert else None
        if target is not None:
            reason += f"; rolled back to version {target.version}"
        return "failed", reason, v.ready
    if v.state == "complete":
        return "settled", "", v.ready
    if v.waiting_promotion:
        msg = f"canaries of version {version} ready: `elastin rollout promote {w.name}`"
        return "settled", msg, v.ready
    return "settling", "", v.ready


def settlement(
    app: Application,
    stopped: Collection[str],
    allocs: Iterable[Allocation],
    *,
    versions: Mapping[str, int] | None = None,
    history: Mapping[str, Sequence[Revision]] | None = None,
    now: float = 0.0,
    from_generation: int = 0,
) -> Settlement:
    """Where ``app`` stands, from its allocations (others are ignored). Without
    ``versions`` the newest version among a workload's allocations counts as its current
    one; without ``history`` no version is still to be proven (so none fails by its
    deadline or the crash rule). ``from_generation``: the record generation a wait started
    from (what ``apply`` and the version commands answer): a version made from then on that
    failed and was rolled back fails the wait, naming both; without it only the current
    version is judged."""
    by_workload: dict[str, list[Allocation]] = {}
    for a in allocs:
        if a.app == app.name:
            by_workload.setdefault(a.workload, []).append(a)
    history = history or {}
    progress = tuple(
        _progress(
            w,
            w.name in stopped,
            by_workload.get(w.name, ()),
            versions.get(w.name, 0) if versions is not None else None,
            history.get(w.name, ()),
            now,
            from_generation,
        )
        for w in app.workloads
    )
    state: State = "settled"
    if any(p.state == "failed" for p in progress):
        state = "failed"
    elif any(p.state == "settling" for p in progress):
        state = "settling"
    unsettled = [
        a
        for p in progress
        if p.state == "settling"
        for a in by_workload.get(p.name, ())
        if not a.terminal
    ]
    waiting = (
        state == "settling"
        and bool(unsettled)
        and all(a.status == "pending" and a.reason for a in unsettled)
    )
    return Settlement(app.name, state, progress, waiting)


def workload_ready(w: Workload, allocs: Iterable[Allocation]) -> bool:
    """Whether ``w`` is ready for a workload that depends on it (``depends_on``)."""
    mine = [a for a in allocs if a.workload == w.name]
    if w.type == "job":
        return sum(1 for a in mine if a.status == "complete") >= w.completions
    return any(a.status == "running" and (w.health is None or a.healthy is True) for a in mine)
