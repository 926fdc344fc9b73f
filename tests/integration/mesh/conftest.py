"""Fixtures of the real-HAProxy tests; the helpers themselves are in ``meshproxy``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from meshproxy import MeshProxy

from elastin.mesh.model import MeshSnapshot


@pytest.fixture
def mesh_proxy(tmp_path: Path) -> Iterator[Callable[[MeshSnapshot], MeshProxy]]:
    """``mesh_proxy(snapshot)`` starts a proxy; every proxy started is stopped at the end."""
    started: list[MeshProxy] = []

    def start(snap: MeshSnapshot) -> MeshProxy:
        p = MeshProxy(tmp_path / f"mesh{len(started)}", snap)
        started.append(p)
        return p

    try:
        yield start
    finally:
        for p in started:
            p.stop()
