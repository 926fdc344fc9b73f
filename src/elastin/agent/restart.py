"""The restart policy as a pure decision: what to do when an instance's run ended.

``decide`` takes the workload's type and ``RestartPolicy``, the restarts counted so far, when
the run started and ended (seconds on any one clock) and whether it ended well, and returns
one of::

    Restart(delay, restarts)   start it again after ``delay`` seconds; ``restarts`` is the
                               new count (a run that lasted ``reset_after`` starts a new series)
    GiveUp(restarts)           the policy's ``attempts`` are used up: the allocation fails
    Finish(status)             no restart: ``complete`` (it ended well) or ``failed``

Only services restart in place; a job's failed run is reported ``failed`` and the scheduler
places a new attempt while the job's ``retries`` allow. ``AllocRunner`` applies the decision
(reports, sleeps, starts); nothing here reads a clock or does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from elastin.model.workload import RestartPolicy, WorkloadType


@dataclass(frozen=True)
class Restart:
    delay: float
    restarts: int


@dataclass(frozen=True)
class GiveUp:
    restarts: int


@dataclass(frozen=True)
class Finish:
    status: Literal["complete", "failed"]


Decision = Restart | GiveUp | Finish


def wants_restart(policy: RestartPolicy, type_: WorkloadType, ok: bool) -> bool:
    """Whether the policy restarts a run that ended well (``ok``) or not."""
    return type_ == "service" and (
        policy.mode == "always" or (policy.mode == "on-failure" and not ok)
    )


def decide(
    policy: RestartPolicy,
    type_: WorkloadType,
    *,
    restarts: int,
    started: float,
    ended: float,
    ok: bool,
) -> Decision:
    """What to do after a run that lasted from ``started`` to ``ended`` (see the module)."""
    if not wants_restart(policy, type_, ok):
        return Finish("complete" if ok else "failed")
    if ended - started >= policy.reset_after:
        restarts = 0  # it ran well for a while: a fresh series of attempts
    if policy.attempts and restarts >= policy.attempts:
        return GiveUp(restarts)
    restarts += 1
    return Restart(policy.delay(restarts), restarts)
