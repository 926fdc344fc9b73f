"""Gaps of the node's port allocator and what the agent tells about ports (review of issue
#11, item 5), pure or on the fake driver and a ``FakeClock``:

* a fixed port inside the dynamic range is kept from every ``take`` from the moment the
  agent has the allocation (its runner exists), also while the instance it replaces still
  holds it and in the moment between that one's release and its own claim (a stop-first
  rollout); released when the allocation ends;
* ``take`` binds at most ``PROBES`` candidates: a range full of other processes' sockets
  fails at once with a clear message instead of binding ~12k sockets on the event loop;
* a port holder's command line (a workload chooses its own) goes into events and errors
  without control characters and bounded;
* the mesh events the agent tells once are forgotten when what they told is over.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest
from agent_support import offline_agent

from elastin.agent.mesh import MeshManager
from elastin.agent.ports import NoFreePort, PortAllocator, describe_pid, holder
from elastin.agent.runner import AllocRunner
from elastin.clock import yield_now
from elastin.mesh.model import Listener
from elastin.model.cluster import Allocation
from elastin.model.workload import Port, Workload
from elastin.testing import FakeClock, FakeDriver, FakeProxy

FIXED = 25000  # a fixed port inside the dynamic range (20000-32000)
PROBES = 256  # the most candidates a take binds (``agent.ports.PROBES``)


def runner(
    tmp: Path, w: Workload, d: FakeDriver, clock: FakeClock, pool: PortAllocator
) -> AllocRunner:
    async def deps_ready(_a: Allocation, _w: Workload) -> str:
        return ""

    return AllocRunner(
        Allocation(id="new", app="app", workload=w.name, index=0),
        w,
        d,
        alloc_root=tmp / "allocs",
        state_dir=tmp / "handles",
        report=lambda _alloc_id, **_f: None,
        deps_ready=deps_ready,
        clock=clock,
        ports=pool,
        port_taken=lambda _port: None,
    )


async def until(cond: Any) -> None:
    async with asyncio.timeout(5):
        while not cond():
            await yield_now()


# (a) ----------------------------------------------------------------------------------
def test_a_wanted_fixed_port_is_never_taken_until_its_owner_ends() -> None:
    pool = PortAllocator(FIXED, FIXED + 1, is_free=lambda _p: True)
    pool.want("new", [FIXED])
    assert pool.take("x", "x") == FIXED + 1
    with pytest.raises(NoFreePort):
        pool.take("y", "y")  # the last one is wanted as a fixed port, although nobody holds it
    assert pool.claim("new", FIXED, "new: port http") is None  # its owner claims it
    assert pool.release("new") == [FIXED]
    assert pool.wanted() == {}
    assert pool.take("y", "y") == FIXED  # its owner ended: free to hand out


async def test_a_stop_first_rollout_keeps_the_fixed_port_from_a_concurrent_take(
    tmp_path: Path,
) -> None:
    d = FakeDriver()
    clock = FakeClock()
    # the range is the fixed port and one more; every port free as far as binding tells
    pool = PortAllocator(FIXED, FIXED + 1, is_free=lambda _p: True, rng=random.Random(3))
    assert pool.claim("old", FIXED, "app.web[0] old00000: port http") is None
    w = Workload(name="web", command=("srv",), ports=(Port("http", FIXED),))
    r = runner(tmp_path, w, d, clock, pool)  # the agent has the new allocation
    task = asyncio.create_task(r.run())
    await until(lambda: clock.sleepers == 1)  # waiting for the old instance to let it go
    pool.release("old")  # it did; before the new runner looks again, another takes a port
    assert pool.take("other", "another instance's dynamic port") == FIXED + 1
    with pytest.raises(NoFreePort):
        pool.take("other", "and one more")
    clock.advance(0.5)
    await until(lambda: d.running("new"))
    assert pool.holder(FIXED) is not None and pool.holder(FIXED).owner == "new"  # type: ignore[union-attr]
    r.request_stop()
    await asyncio.wait_for(task, 5)
    assert FIXED not in pool.held() and pool.wanted() == {}  # released when it ended


# (b) ----------------------------------------------------------------------------------
def test_a_take_binds_a_bounded_number_of_candidates() -> None:
    probed: list[int] = []

    def in_use(port: int) -> bool:
        probed.append(port)
        return False  # every port of the range held by other processes

    pool = PortAllocator(is_free=in_use, rng=random.Random(5))
    pool.claim("a1", 20000, "a1: port http")
    with pytest.raises(NoFreePort) as e:
        pool.take("a2", "a2: port http")
    assert len(probed) == PROBES
    message = str(e.value)
    assert "20000-32000" in message and f"the {PROBES} others tried" in message
    assert "1 reserved by this agent" in message
    assert "stop some of the processes" in message


def test_a_few_free_ports_among_busy_ones_are_still_found() -> None:
    free = {20100}
    pool = PortAllocator(20000, 20199, is_free=lambda p: p in free, rng=random.Random(1))
    assert pool.take("a1", "x") == 20100  # within PROBES of any start in a range this small


# (c) ----------------------------------------------------------------------------------
def write_cmdline(proc: Path, pid: int, argv: list[bytes]) -> None:
    (proc / str(pid)).mkdir(parents=True)
    (proc / str(pid) / "cmdline").write_bytes(b"\0".join(argv) + b"\0")


def test_a_holders_command_line_is_made_printable_and_bounded(tmp_path: Path) -> None:
    evil = [b"nc", b"-l", b"8080\n\x1b[2J\x1b]0;owned\x07", "\u202eevil".encode()]
    write_cmdline(tmp_path, 42, evil)
    got = describe_pid(42, tmp_path)
    assert got == "pid 42 (nc -l 8080\\n\\x1b[2J\\x1b]0;owned\\x07 \\u202eevil)"
    assert all(c.isprintable() for c in got), repr(got)
    write_cmdline(tmp_path, 43, [b"python3", b"x" * 5_000_000])
    long = describe_pid(43, tmp_path)
    assert long.startswith("pid 43 (python3 xxx") and long.endswith("…)")
    assert len(long) <= len("pid 43 ()") + 120


def test_the_holder_named_in_events_is_printable(tmp_path: Path) -> None:
    write_cmdline(tmp_path, 7, [b"sh", b"-c", b"\x1b[31mred\r\nfake log line"])
    (tmp_path / "net").mkdir()
    inode = 999
    header = (
        "sl local_address rem_address st tx_queue rx_queue tr tm->when retrnsmt uid timeout inode"
    )
    fields = [
        "0:",
        "0100007F:1F90",
        "00000000:0000",
        "0A",
        "0:0",
        "00:0",
        "0",
        "0",
        "0",
        str(inode),
    ]
    row = " ".join(fields)
    (tmp_path / "net" / "tcp").write_text(f"{header}\n{row}\n")
    (tmp_path / "7" / "fd").mkdir()
    (tmp_path / "7" / "fd" / "3").symlink_to(f"socket:[{inode}]")
    who = holder(8080, tmp_path).who
    assert who == "pid 7 (sh -c \\x1b[31mred\\r\\nfake log line)"
    assert all(c.isprintable() for c in who)


# (d) ----------------------------------------------------------------------------------
def no_client() -> object:
    raise AssertionError("not used")


async def test_mesh_events_told_once_are_forgotten_when_over(tmp_path: Path) -> None:
    driver = FakeDriver()
    agent = offline_agent(tmp_path, driver)
    events: list[tuple[str, str]] = []

    def report(alloc_id: str, **f: Any) -> None:
        events.extend((alloc_id, e[0]) for e in f.get("events", []))

    agent.reporter.report = report  # type: ignore[method-assign]
    mesh = MeshManager(no_client, "n1", tmp_path / "mesh", FakeProxy(), clock=FakeClock())  # type: ignore[arg-type]
    agent.mesh = mesh
    a1 = Allocation(id="a1", app="shop", workload="web", index=0, status="running")
    w = Workload(name="web", command=("srv",), upstreams=("api",))
    agent.runners["a1"] = agent._runner(a1, w)
    lst = Listener("a1.api", 21234, "shop.api.http")

    # a listener whose port is held: told once, however often the mesh says so
    mesh.listener_failed = {"a1.api": (21234, "pid 7 (nc)")}
    agent.mesh_listener_failed(lst, "pid 7 (nc)")
    agent.mesh_listener_failed(lst, "pid 7 (nc)")
    assert events == [("a1", "mesh.listener_failed")]
    # an application left out: told once
    mesh.left_out = {"shop": "bad"}
    agent.mesh_left_out("shop", "bad", ())
    agent.mesh_left_out("shop", "bad", ())
    assert events[1:] == [("a1", "mesh.left_out")]

    # both are over: the listener is served again, the application rendered
    mesh.listener_failed, mesh.left_out = {}, {}
    async with asyncio.TaskGroup() as tg:
        await agent.sync(tg, [a1])  # nothing to do: a1 has its runner
    assert agent._listener_told == set() and agent._left_out_told == set()
    # and when they happen again they are told again
    mesh.listener_failed = {"a1.api": (21234, "pid 7 (nc)")}
    agent.mesh_listener_failed(lst, "pid 7 (nc)")
    mesh.left_out = {"shop": "bad"}
    agent.mesh_left_out("shop", "bad", ())
    assert events[2:] == [("a1", "mesh.listener_failed"), ("a1", "mesh.left_out")]

    # the allocation is gone: nothing is kept for it, though its listener still "fails"
    del agent.runners["a1"]
    agent.forget_told()
    assert agent._listener_told == set() and agent._left_out_told == set()
