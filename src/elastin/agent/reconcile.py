"""What should run on this node: the allocations the server sent, against the runners this
agent has, turned into a list of actions (pure; ``Agent.sync`` executes them in order).

For each allocation the server sent:

============================================  ==========================================
the allocation                                the action
============================================  ==========================================
desired ``stop``, a runner has it             ``Stop`` (drain after the watch's revision)
desired ``stop``, no runner, still active     ``ReportStopped`` (nothing runs it here)
desired ``run``, ``pending`` or ``starting``  ``Start``: nothing of it runs (it waited
with pid 0, no runner, no handle, its         for its dependencies, upstreams, a fixed
driver is here                                port, a retry or a restart delay when an
                                              earlier agent process stopped); its
                                              ``restarts`` and ``attempt`` carry over
desired ``run``, ``starting``/``running``     ``ReportLost``: started by an earlier agent
(or ``pending`` with a handle), no runner     process whose handle did not survive (or
                                              could not be re-attached)
============================================  ==========================================

then, for each runner: ``Forget`` it once it is done and the server has its allocation's
end (or no longer has the allocation: a runner forgotten earlier would make a stale answer,
its report not delivered yet, look like an allocation nothing started); ``StopUnknown`` when
the server no longer has its allocation. Anything else needs no action.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from elastin.model.cluster import Allocation

ACTIVE = ("pending", "starting", "running")


@dataclass(frozen=True)
class Start:
    alloc: Allocation


@dataclass(frozen=True)
class Stop:
    alloc_id: str
    drain_after: int  # the revision at which the server stopped it


@dataclass(frozen=True)
class ReportStopped:
    alloc_id: str
    reason: str


@dataclass(frozen=True)
class ReportLost:
    alloc_id: str
    reason: str = "lost track of the instance across an agent restart"


@dataclass(frozen=True)
class Forget:
    alloc_id: str


@dataclass(frozen=True)
class StopUnknown:
    alloc_id: str
    reason: str = "the server no longer has this allocation"


Action = Start | Stop | ReportStopped | ReportLost | Forget | StopUnknown


def reconcile(
    allocs: Sequence[Allocation],
    runners: Mapping[str, bool],
    drivers: Collection[str],
    index: int = 0,
    handles: Collection[str] = (),
) -> list[Action]:
    """``runners``: this agent's runners, allocation id -> whether it is done; ``drivers``:
    the kinds this node runs; ``index``: the revision of the allocations watched;
    ``handles``: the allocations with an instance handle on disk but no runner (an
    earlier agent process started an instance this one could not re-attach to)."""
    actions: list[Action] = []
    seen: set[str] = set()
    ended: set[str] = set()  # the server has their end
    for a in allocs:
        seen.add(a.id)
        if a.terminal:
            ended.add(a.id)
        has_runner = a.id in runners
        if a.desired == "stop":
            if has_runner:
                actions.append(Stop(a.id, index))
            elif a.status in ACTIVE:
                actions.append(ReportStopped(a.id, a.reason or "stopped"))
        elif has_runner:
            continue
        elif (
            a.kind in drivers
            and a.status in ("pending", "starting")
            and not a.pid
            and a.id not in handles
        ):
            actions.append(Start(a))
        elif a.status in ("starting", "running") or (a.status == "pending" and a.id in handles):
            actions.append(ReportLost(a.id))
    for alloc_id, done in runners.items():
        if done:
            if alloc_id in ended or alloc_id not in seen:
                actions.append(Forget(alloc_id))
        elif alloc_id not in seen:
            actions.append(StopUnknown(alloc_id))
    return actions
