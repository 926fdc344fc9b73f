"""When a change has settled: the one definition the CLI, the SDK, the agent and the API use.

``settlement(app, stopped, allocs)`` looks at an application as applied and its allocations
and says, per workload and for the whole application, whether it is still ``settling``,
``settled`` or ``failed``:

- a service is settled when at least ``desired`` instances run and none of its running
  instances is known unhealthy; it has failed when any of its instances failed;
- a job is settled when ``completions`` instances completed, or when one failed (the
  scheduler may still retry it); it has failed when one failed, it is not done and nothing of
  it is running or pending any more;
- the application is failed when a workload failed, settled when every workload is settled.

``waiting`` is true when every instance not yet settled is pending with a reason (no feasible
node, waiting for a dependency): nothing moves until something else changes.

``workload_ready(workload, allocs)`` is what a dependency needs (``depends_on``): a job that
completed its completions, or a service with one running instance that is not unhealthy
(healthy, when it has a check).

Pure: data in, a verdict out.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from elastin.model.cluster import Allocation
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


def _progress(w: Workload, stopped: bool, mine: Sequence[Allocation]) -> WorkloadProgress:
    live = [a for a in mine if not a.terminal]
    running = [a for a in live if a.status == "running"]
    pending = sum(1 for a in live if a.status == "pending")
    complete = sum(1 for a in mine if a.status == "complete")
    failed = sum(1 for a in mine if a.status == "failed")
    unhealthy = sum(1 for a in running if a.healthy is False)
    state: State
    if w.type == "job":
        desired = 0 if stopped else w.completions
        done = complete >= desired
        if failed and not done and not running and not pending:
            state = "failed"
        elif done or failed:
            state = "settled"
        else:
            state = "settling"
    else:
        desired = 0 if stopped else w.instances
        if failed:
            state = "failed"
        elif len(running) >= desired and not unhealthy:
            state = "settled"
        else:
            state = "settling"
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
    )


def settlement(
    app: Application, stopped: Collection[str], allocs: Iterable[Allocation]
) -> Settlement:
    """Where ``app`` stands, from its allocations (others are ignored)."""
    by_workload: dict[str, list[Allocation]] = {}
    for a in allocs:
        if a.app == app.name:
            by_workload.setdefault(a.workload, []).append(a)
    progress = tuple(
        _progress(w, w.name in stopped, by_workload.get(w.name, ())) for w in app.workloads
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
