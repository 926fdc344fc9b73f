"""Which allocation directories the agent's GC removes (``elastin.agent.gc.plan``, pure),
and when a rotated log copy fits on its disk (``logfiles.room_for_copy``)."""

from __future__ import annotations

import pytest

from elastin.agent.gc import AllocDir, GcPolicy, Removal, plan
from elastin.agent.logfiles import room_for_copy

HOUR = 3600.0
NOW = 100 * HOUR
POLICY = GcPolicy(retention=4 * HOUR, disk_threshold=0.8)


def d(name: str, hours_ago: float) -> AllocDir:
    return AllocDir(name, NOW - hours_ago * HOUR)


DIRS = [d("old", 10), d("edge", 4), d("young", 1), d("live", 50), d("handle", 20)]
KEEP = {"live", "handle"}


def test_unknown_directories_go_after_the_retention_oldest_first() -> None:
    assert plan(DIRS, KEEP, NOW, POLICY, disk_low=False) == [
        Removal("old", True),
        Removal("edge", True),
    ]


def test_a_low_disk_takes_the_young_ones_too_after_the_expired_ones() -> None:
    assert plan(DIRS, KEEP, NOW, POLICY, disk_low=True) == [
        Removal("old", True),
        Removal("edge", True),
        Removal("young", False),
    ]


def test_known_or_handled_directories_are_never_removed() -> None:
    for low in (False, True):
        names = {r.name for r in plan(DIRS, KEEP, NOW, GcPolicy(retention=0), low)}
        assert not names & KEEP


def test_the_default_policy_and_bad_values() -> None:
    assert GcPolicy() == GcPolicy(4 * HOUR, 0.8)
    with pytest.raises(ValueError, match="retention"):
        GcPolicy(retention=-1)
    with pytest.raises(ValueError, match="threshold"):
        GcPolicy(disk_threshold=0)


def test_a_copy_needs_its_size_and_the_reserve() -> None:
    assert room_for_copy(size=10, free=30, reserve=20)
    assert not room_for_copy(size=11, free=30, reserve=20)
    assert not room_for_copy(size=10, free=0, reserve=0)
