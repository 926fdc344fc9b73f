"""Waiting in tests that drive real processes: poll a condition (run in a worker thread, so
a blocking client call does not stall the loop) until it holds, with a bounded timeout and
the last value or error in the failure message."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def wait_for(cond: Callable[[], T], timeout: float, what: str, every: float = 0.1) -> T:
    """``cond()``'s first truthy value within ``timeout`` s; an ``AssertionError`` naming
    ``what`` and the last value (or exception) otherwise."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await asyncio.to_thread(cond)
        except Exception as e:  # transient while processes start or restart
            last = e
        if last and not isinstance(last, Exception):
            return last  # type: ignore[no-any-return]
        await asyncio.sleep(every)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")
