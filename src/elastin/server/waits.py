"""Blocking queries: "wait until the version passes N", in one place.

A ``Watermark`` is a number that only goes up. ``wait_past(index, timeout)`` returns as soon
as it is above ``index`` (at once when it already is), when ``timeout`` runs out, or when
the watermark is closed (the server is stopping: every waiter answers now, agents ask
again). Advancing is synchronous and wakes every waiter at once, without a task or a lock.

``Changes`` holds the watermarks the server's rooms share:

- ``mesh``: the store revision of the last change that can alter a mesh snapshot, the
  service registry or an application's settlement (applications, allocations' status,
  health and ports, nodes);
- one per node: the revision of the last change to what that node should run (agents'
  blocking queries for their allocations wait on it, so that an agent's own reports do not
  wake it);
- ``kick()`` asks the applier for a scheduling pass.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable


class Watermark:
    def __init__(self, value: int = 0) -> None:
        self._value = value
        self._moved = asyncio.Event()
        self._closed = False

    @property
    def value(self) -> int:
        return self._value

    @property
    def closed(self) -> bool:
        return self._closed

    def advance(self, value: int) -> None:
        """Move to ``value`` if that is higher; wake every waiter."""
        if value > self._value:
            self._value = value
            self._wake()

    def close(self) -> None:
        """Answer every waiter now, and every later one at once."""
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        moved, self._moved = self._moved, asyncio.Event()
        moved.set()

    async def wait_past(self, index: int, timeout: float) -> int:
        """Wait up to ``timeout`` s until the value passes ``index``; return the value."""
        if self._value > index or timeout <= 0 or self._closed:
            return self._value
        # asyncio.timeout, not wait_for: no extra task per waiter
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self._value <= index and not self._closed:
                    await self._moved.wait()
        return self._value


class Changes:
    """The watermarks shared by the server's rooms, and the applier's kick."""

    def __init__(self, revision: int = 0) -> None:
        self.mesh = Watermark(revision)
        self.dirty = asyncio.Event()
        self._nodes: dict[str, Watermark] = {}
        self._start = revision

    def node(self, node_id: str) -> Watermark:
        """What node ``node_id`` should run changes past this mark (an index from an
        earlier server process is honoured: it starts at the revision the server began at)."""
        mark = self._nodes.get(node_id)
        if mark is None:
            mark = self._nodes[node_id] = Watermark(max(self._start, self.mesh.value))
            if self.mesh.closed:
                mark.close()
        return mark

    def kick(self) -> None:
        """Ask the applier for a scheduling pass."""
        self.dirty.set()

    def committed(self, revision: int) -> None:
        """Something that can need scheduling and can alter mesh snapshots was committed."""
        self.kick()
        self.mesh.advance(revision)

    def touch_nodes(self, node_ids: Iterable[str], revision: int) -> None:
        """What these nodes should run changed at ``revision``."""
        for n in node_ids:
            if n:
                self.node(n).advance(revision)

    def close(self) -> None:
        """The server is stopping: every blocking query answers now."""
        self.mesh.close()
        for mark in self._nodes.values():
            mark.close()
