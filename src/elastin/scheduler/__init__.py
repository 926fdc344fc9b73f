"""The scheduler: pure functions from a cluster snapshot to a ``Plan``.

Layer 2: it imports only ``elastin.model`` (not the store: the server hands it a snapshot).
Nothing here does I/O, reads a clock or draws randomness other than from the seeded
``random.Random`` passed in. The server's applier (``server.applier``) commits a plan in one store
transaction guarded by the revision it read, re-checking it with ``check_plan`` when the state
moved in between (docs/scheduler.md: deciding is separate from applying).

Modules:
    state       ``ClusterState``: the snapshot, with lazily built indexes
    plan        ``Plan`` (with ``Preemption``, ``Lost``) and ``SchedulerOptions``
    commit      ``plan_writes``: what committing a plan writes (the server's applier and
                ``apply_plan``, the same commit on a ``ClusterState``, both use it)
    reconcile   desired vs actual per application: what stops, what needs a node
    core        ``schedule`` / ``reconcile``: feasibility, sampling, ranking, preemption
    check       ``check_plan``: re-validate a plan against a newer snapshot
    accounting  ``resource_report``: R/C/A totals per kind, per node and for the cluster
    errors      ``SchedulerError`` (the exception root of this package)
"""

from __future__ import annotations

from elastin.scheduler.check import check_plan
from elastin.scheduler.commit import PlanWrites, apply_plan, plan_writes
from elastin.scheduler.core import reconcile, schedule
from elastin.scheduler.errors import InvalidOptions, SchedulerError
from elastin.scheduler.plan import Lost, Plan, Preemption, SchedulerOptions
from elastin.scheduler.state import ClusterState

__all__ = [
    "ClusterState",
    "InvalidOptions",
    "Lost",
    "Plan",
    "PlanWrites",
    "Preemption",
    "SchedulerError",
    "SchedulerOptions",
    "apply_plan",
    "check_plan",
    "plan_writes",
    "reconcile",
    "schedule",
]
