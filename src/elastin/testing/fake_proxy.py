"""``FakeProxy``: the agent's ``Proxy`` (``elastin.agent.mesh``) in memory, for tests of the
mesh manager without HAProxy.

It records every configuration ``load``\\ ed and every runtime ``command``; a test makes it
die (``die()``), refuse commands (``refuse[prefix] = answer``: HAProxy's own one-line
refusal), not answer at all (``answering = False``: ``OSError``), leave listeners down
(``down``), and sets what a command answers (``answers``, e.g. ``show stat`` CSV);
``each_worker_calls`` records what was asked of every worker, and ``stalled`` makes that
wait as a master CLI that does not answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from elastin.mesh.haproxy.render import Paths
from elastin.mesh.haproxy.runtime_client import HaproxyError
from elastin.mesh.model import Listener


class FakeProxy:
    def __init__(self, socket: str = "/nonexistent/elastin-fake-haproxy.sock") -> None:
        self.socket = socket
        self.reloads = 0
        self.starts = 0
        self.running = False
        self.configs: list[str] = []  # every configuration loaded, in order
        self.commands: list[str] = []  # every runtime command sent, in order
        self.refuse: dict[str, str] = {}  # command prefix -> HAProxy's refusal
        self.answers: dict[str, str] = {}  # command -> answer ("" when not set)
        self.answering = True  # False: the socket does not answer (OSError)
        self.down: list[str] = []  # what ``unreachable`` reports
        self.stops = 0
        self.each_worker_calls: list[tuple[str, float | None]] = []  # (command, timeout)
        self.stalled: asyncio.Event | None = None  # set: ``each_worker`` waits for it

    def paths(self) -> Paths:
        return Paths(self.socket, "/nonexistent/haproxy.pid", "/nonexistent/elastin.lua")

    def alive(self) -> bool:
        return self.running

    async def load(self, text: str) -> str:
        self.configs.append(text)
        if self.running:
            self.reloads += 1
            return "reloaded"
        self.running = True
        self.starts += 1
        return "started"

    async def command(self, command: str) -> str:
        self.commands.append(command)
        if not self.running or not self.answering:
            raise ConnectionRefusedError(f"no proxy answers on {self.socket}")
        for prefix, answer in self.refuse.items():
            if command.startswith(prefix):
                raise HaproxyError(f"haproxy refused {command!r}: {answer}")
        return self.answers.get(command, "")

    async def each_worker(self, command: str, timeout: float | None = None) -> list[str]:
        """``command`` to every live worker: this fake has one (``command``); each call is
        recorded in ``each_worker_calls`` with its ``timeout``. With ``stalled`` (an
        ``asyncio.Event``) it waits until that is set, as a master CLI that does not answer
        (``timeout`` is not applied here: what the caller bounds itself is tested)."""
        self.each_worker_calls.append((command, timeout))
        if self.stalled is not None:
            await self.stalled.wait()
        return [await self.command(command)]

    async def unreachable(self, listeners: Sequence[Listener], timeout: float) -> list[str]:
        return list(self.down)

    def stop(self) -> None:
        self.stops += 1
        self.running = False

    def die(self) -> None:
        """The proxy crashed (the manager's supervisor should start it again)."""
        self.running = False
