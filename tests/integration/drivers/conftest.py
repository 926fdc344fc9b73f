"""Fixtures of the task driver's integration tests: a ``TaskDriver`` on a cgroup root of its
own, removed (with every process left in it) at the end."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from elastin.agent.drivers.cgroups import destroy_root
from elastin.agent.drivers.task import TaskDriver


@pytest.fixture
def driver() -> Iterator[TaskDriver]:
    root = f"elastin-test-{secrets.token_hex(4)}"
    yield TaskDriver(root)
    destroy_root(root)
