"""Running a server and an agent together in one process (``elastin up``, ``elastin daemon``).

``run_embedded`` serves the API, runs the scheduler and a local agent, then hands control to
``main(url, token, agent, shutdown)``; when ``main`` returns or fails, or the process gets one
of ``signals`` (SIGINT and SIGTERM; ``up`` in the foreground adds SIGHUP), it shuts
everything down. With ``stop_workloads`` the agent stops its instances first — also when
``main`` failed, whose error is raised once they are stopped; without, they keep running and
the next agent re-attaches to them (``elastin down`` uses that to stop what a killed ``up``
left running).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from elastin.agent.agent import Agent, AgentConfig
from elastin.agent.drivers.registry import default_drivers
from elastin.server.app import ServerConfig, run_server
from elastin.serving import Limits, default_max_connections

Main = Callable[[str, str, Agent, asyncio.Event], Coroutine[Any, Any, None]]


SHUTDOWN_TIMEOUT = 15.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def _bounded(tasks: set[asyncio.Task[Any]], what: str) -> None:
    """Wait for cancelled tasks to finish, but not forever: a shutdown always ends. What did
    not finish in time is reported with its stack (a bug to fix, not a reason to hang)."""
    _, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_TIMEOUT)
    for t in pending:
        print(f"elastin: {what} did not stop within {SHUTDOWN_TIMEOUT:g}s:", file=sys.stderr)
        t.print_stack(file=sys.stderr)


async def run_embedded(
    data_dir: Path,
    *,
    port: int,
    main: Main,
    host: str = "127.0.0.1",
    stop_workloads: bool = True,
    signals: tuple[signal.Signals, ...] = STOP_SIGNALS,
) -> None:
    shutdown = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in signals:
        loop.add_signal_handler(sig, shutdown.set)
    done = asyncio.Event()
    failed: list[BaseException] = []  # the agent's error: raised once everything stopped
    # one process, two APIs: they share the descriptor budget (half the default cap each)
    limits = Limits.from_env(max_connections=max(8, default_max_connections() // 2))

    async def on_ready(url: str, token: str) -> None:
        agent = Agent(
            AgentConfig(data_dir=data_dir, server_url=url, token=token, api_limits=limits),
            default_drivers(),
        )
        agent_task = asyncio.create_task(agent.run())
        main_task = asyncio.create_task(main(url, token, agent, shutdown))
        stop_task = asyncio.create_task(shutdown.wait())
        try:
            await asyncio.wait(
                {main_task, stop_task, agent_task}, return_when=asyncio.FIRST_COMPLETED
            )
            if agent_task.done() and (error := agent_task.exception()) is not None:
                failed.append(error)
                return  # its runners are gone: nothing to stop through it
            shutdown.set()
            if not main_task.done():
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    async with asyncio.timeout(60):
                        await main_task
            if stop_workloads:
                # through the server first, so that nothing is placed again meanwhile
                with contextlib.suppress(Exception):
                    await agent.client.call("POST", "/v1/stop", json={"ref": None})
                await agent.stop_all()
            if main_task.done() and not main_task.cancelled():
                main_task.result()  # main's error, now that its instances are stopped
        finally:
            for t in (main_task, stop_task, agent_task):
                t.cancel()
            await _bounded({main_task, stop_task, agent_task}, "the agent")
            if stop_workloads and not failed:  # else it was kept only while instances run
                # after the mesh manager stopped, so that nothing starts it again; not forced:
                # an instance that outlived stop_all (a long stop_grace) keeps its listeners
                agent.stop_mesh_if_idle()
            done.set()

    server = asyncio.create_task(
        run_server(
            ServerConfig(data_dir=data_dir, host=host, port=port, limits=limits),
            on_ready=on_ready,
        )
    )
    waiter = asyncio.create_task(done.wait())
    try:
        await asyncio.wait({server, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if server.done():
            server.result()  # re-raise a startup error (e.g. port in use)
        if failed:
            raise failed[0]
    finally:
        server.cancel()
        waiter.cancel()
        await _bounded({server, waiter}, "the server")
        for sig in signals:
            loop.remove_signal_handler(sig)
