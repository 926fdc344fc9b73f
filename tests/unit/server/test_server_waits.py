"""``Watermark``: the one "wait until the version passes N" of every blocking query."""

from __future__ import annotations

import asyncio

from elastin.server.waits import Changes, Watermark


async def test_past_the_index_answers_at_once_and_a_timeout_answers_the_same() -> None:
    w = Watermark(5)
    assert await w.wait_past(4, 10.0) == 5
    assert await w.wait_past(5, 0) == 5
    assert await w.wait_past(5, 0.01) == 5  # timed out: the value as it is


async def test_advance_wakes_every_waiter_and_never_goes_back() -> None:
    w = Watermark(1)
    waiters = [asyncio.create_task(w.wait_past(1, 30.0)) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(t.done() for t in waiters)
    w.advance(0)  # lower: nothing moves
    await asyncio.sleep(0)
    assert not any(t.done() for t in waiters) and w.value == 1
    w.advance(3)
    assert await asyncio.gather(*waiters) == [3, 3, 3]


async def test_close_answers_waiters_now_and_later_ones_at_once() -> None:
    w = Watermark()
    waiter = asyncio.create_task(w.wait_past(0, 30.0))
    await asyncio.sleep(0)
    w.close()
    assert await waiter == 0
    assert await w.wait_past(0, 30.0) == 0 and w.closed


async def test_a_node_mark_starts_at_the_servers_revision_and_moves_alone() -> None:
    c = Changes(revision=40)
    n1 = c.node("n1")
    assert await n1.wait_past(0, 1.0) == 40  # an index from before: answered at once
    waiter = asyncio.create_task(n1.wait_past(40, 30.0))
    c.touch_nodes(["n2"], 41)
    await asyncio.sleep(0)
    assert not waiter.done() and c.node("n2").value == 41
    c.touch_nodes(["n1", ""], 42)
    assert await waiter == 42
    c.close()
    assert c.node("n3").closed  # made after close: answers at once too
