"""The actual state: nodes, allocations (placed instances of workloads), events, usage.

Allocation lifecycle (``AllocStatus``)::

    pending ──► starting ──► running ──► complete      (job instance exited 0)
       │            │           │  └───► failed        (exited non-zero, restarts exhausted)
       │            │           └──────► stopped       (asked to stop)
       │            └──────────────────► failed / stopped
       └── (no feasible node: stays pending with a reason; may be stopped)
    any non-terminal ──► lost                           (its node went away)

``desired`` is what the server wants (``run`` / ``stop``); ``status`` is what the agent
reports. ``ALLOC_TRANSITIONS`` is the table of legal moves; ``check_transition`` raises on an
illegal one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from elastin.model.errors import ModelError
from elastin.model.resources import Resources
from elastin.model.workload import Kind, WorkloadType

AllocStatus = Literal["pending", "starting", "running", "complete", "failed", "stopped", "lost"]
DesiredStatus = Literal["run", "stop"]
NodeStatus = Literal["ready", "down"]

TERMINAL: frozenset[str] = frozenset({"complete", "failed", "stopped", "lost"})

ALLOC_TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"pending", "starting", "running", "failed", "stopped", "lost"}),
    "starting": frozenset({"starting", "running", "complete", "failed", "stopped", "lost"}),
    # running -> starting is a restart in place under the restart policy
    "running": frozenset({"running", "starting", "complete", "failed", "stopped", "lost"}),
    "complete": frozenset({"complete"}),
    "failed": frozenset({"failed"}),
    "stopped": frozenset({"stopped"}),
    "lost": frozenset({"lost"}),
}


class IllegalTransition(ModelError):
    """An allocation was asked to move between two states that the lifecycle forbids."""


def check_transition(old: str, new: str) -> None:
    if new not in ALLOC_TRANSITIONS.get(old, frozenset()):
        raise IllegalTransition(f"allocation cannot go from {old!r} to {new!r}")


@dataclass(frozen=True)
class Node:
    """A machine running an agent."""

    id: str
    name: str
    address: str = "127.0.0.1"
    capacity: Resources = field(default_factory=Resources)  # schedulable (after reserve)
    drivers: tuple[str, ...] = ("task",)
    cgroup_version: str = ""  # "v1", "v2", "hybrid", ""
    attributes: tuple[tuple[str, str], ...] = ()
    status: NodeStatus = "ready"
    last_heartbeat: float = 0.0

    def attrs(self) -> dict[str, str]:
        d = dict(self.attributes)
        d.setdefault("node.name", self.name)
        d.setdefault("node.id", self.id)
        return d


@dataclass(frozen=True)
class Usage:
    """Measured use of one allocation or node: cpu in millicores, memory/disk in bytes."""

    cpu: float = 0.0
    memory: int = 0
    disk: int = 0
    sampled_at: float = 0.0


@dataclass(frozen=True)
class Allocation:
    """One instance of a workload, placed (or waiting to be placed) on a node."""

    id: str
    app: str
    workload: str
    index: int  # replica index (services) or completion slot (jobs)
    type: WorkloadType = "service"
    kind: Kind = "task"
    node_id: str = ""  # "" while pending
    resources: Resources = field(default_factory=Resources)
    priority: int = 50
    spec_version: int = 0  # the app revision whose workload this instance runs
    desired: DesiredStatus = "run"
    status: AllocStatus = "pending"
    reason: str = ""  # why pending / failed / stopped
    restarts: int = 0
    exit_code: int | None = None
    pid: int = 0
    ports: tuple[tuple[str, int], ...] = ()
    healthy: bool | None = None
    usage: Usage = field(default_factory=Usage)
    created_at: float = 0.0
    updated_at: float = 0.0
    ready_at: float = 0.0  # when it last became ready (running; healthy if checked); 0 = not
    attempt: int = 0  # jobs: earlier failed runs of this version (the agent waits retry_wait)

    @property
    def key(self) -> str:
        return f"{self.app}/{self.workload}"

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def name(self) -> str:
        return f"{self.app}.{self.workload}[{self.index}]"

    @property
    def short_id(self) -> str:
        """The id as the CLI shows it beside the name (retries and replacements share a name)."""
        return self.id[:8]

    @property
    def label(self) -> str:
        """Name and short id: what events name an allocation by (``shop.api[0] 1a2b3c4d``)."""
        return f"{self.name} {self.short_id}"


EventSpec = tuple[str, str, str, str]
"""An event to record: (type, subject, message, level)."""


@dataclass(frozen=True)
class Event:
    """Something that happened, for ``elastin events`` and the watch stream."""

    time: float
    type: str  # e.g. "alloc.started", "alloc.oom_killed", "app.applied", "node.registered"
    subject: str  # "app/workload[index]" or node name or app name
    message: str
    level: Literal["info", "warning", "error"] = "info"
    rev: int = 0  # store revision, filled in when read back
    # structured values (e.g. an autoscaling decision's metrics, proposals and bounds)
    data: dict[str, Any] = field(default_factory=dict)
