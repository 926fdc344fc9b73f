"""The agent's mesh manager: keeps this node's HAProxy in step with its mesh snapshot.

It follows the node's snapshot stream (the server pushes each new version) and acknowledges
each version once its proxy serves it, which is how an agent stopping an instance knows
every proxy has dropped it (``docs/mesh.md``, "Draining").
Endpoint churn goes to the running proxy through the runtime API (no reload); a structural
change renders the configuration and reloads hitlessly; a proxy that died is started again
with the current snapshot. HAProxy runs detached, so a restart of the agent leaves it and its
traffic untouched: the new agent finds it by its pid file and reloads it once with the
snapshot it fetches.

The access log: HAProxy writes it into a ring in its memory; the manager's
``AccessLogCollector`` drains it into ``haproxy.log`` in the mesh directory (beside
HAProxy's own messages), which ``elastin logs --mesh`` reads, and rotates that file.

Without an ``haproxy`` binary the manager says so once and stays idle (the rest of the agent
works as before).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from elastin.agent.logfiles import rotate
from elastin.client.errors import ClientError
from elastin.client.http import AsyncClient
from elastin.mesh.haproxy.accesslog import AccessLogCollector
from elastin.mesh.haproxy.process import HaproxyError, HaproxyProcess, haproxy_binary
from elastin.mesh.haproxy.render import render
from elastin.mesh.haproxy.runtime import runtime_commands
from elastin.mesh.haproxy.stats import ClusterStats, parse_stats
from elastin.mesh.model import MeshSnapshot, diff

log = logging.getLogger("elastin.agent.mesh")

DRAIN_SECONDS = 2.0
# the access log (one line per request, drained from HAProxy's ring) is rotated
# copy-truncate like workload logs: at most LOG_FILES files of LOG_MAX_BYTES on disk
LOG_MAX_BYTES = 64 << 20
LOG_FILES = 3


class MeshManager:
    def __init__(self, client: Callable[[], AsyncClient], node_id: str, directory: Path) -> None:
        self.client = client
        self.node_id = node_id
        self.dir = directory
        binary = haproxy_binary()
        self.proxy = HaproxyProcess(directory, binary) if binary else None
        sock = self.proxy.socket if self.proxy else directory / "haproxy.sock"
        self.access_log = AccessLogCollector(sock, self.log_path)
        self.current: MeshSnapshot | None = None
        self.pending_deletes: list[str] = []
        self.runtime_commands = 0  # sent through the runtime API (endpoint churn, no reload)
        # apply and delete_drained run in worker threads, side by side: one at a time
        self._lock = threading.Lock()
        self.exporter_port = self._exporter_port()

    @property
    def log_path(self) -> Path:
        return self.dir / "haproxy.log"

    def _exporter_port(self) -> int:
        """The port of HAProxy's Prometheus exporter: chosen once per node and kept (in the
        mesh directory), so that agent restarts do not change it."""
        path = self.dir / "exporter-port"
        try:
            return int(path.read_text())
        except (OSError, ValueError):
            pass
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        with contextlib.suppress(OSError):
            self.dir.mkdir(parents=True, exist_ok=True)
            path.write_text(str(port))
        return port

    def stats(self) -> dict[str, ClusterStats]:
        """Per-cluster counters of the running proxy (empty when none runs)."""
        if self.proxy is None or not self.proxy.alive():
            return {}
        try:
            return parse_stats(self.proxy.send("show stat -1 6 -1"))  # backends + servers
        except (HaproxyError, OSError):
            return {}

    def _config(self, snap: MeshSnapshot) -> str:
        assert self.proxy is not None
        return render(snap, self.proxy.paths())

    def _listening(self, snap: MeshSnapshot, timeout: float) -> list[str]:
        """Listeners of ``snap`` that do not accept connections within ``timeout``."""
        deadline = time.monotonic() + timeout
        missing = list(snap.listeners)
        while missing and time.monotonic() < deadline:
            still = []
            for lst in missing:
                try:
                    with socket.create_connection((lst.address, lst.port), timeout=0.2):
                        pass
                except OSError:
                    still.append(lst)
            missing = still
            if missing:
                time.sleep(0.05)
        return [f"{lst.name} ({lst.address}:{lst.port})" for lst in missing]

    def _full(self, snap: MeshSnapshot) -> str:
        """Start or reload with the whole configuration, and check that it took effect: a
        reload signalled while the previous one was still re-executing can be lost."""
        assert self.proxy is not None
        done = self.proxy.ensure(self._config(snap))
        for _ in range(3):
            missing = self._listening(snap, 3.0)
            if not missing:
                break
            log.warning("listeners not up after %s: %s; reloading again", done, ", ".join(missing))
            done = self.proxy.ensure(self._config(snap))
        self.current = snap
        self.access_log.wake()  # a new worker: follow its access log at once
        return done

    def apply(self, snap: MeshSnapshot) -> str:
        """Bring the proxy to ``snap``; returns what was done (for logs and tests)."""
        with self._lock:
            return self._apply(snap)

    def _apply(self, snap: MeshSnapshot) -> str:
        assert self.proxy is not None
        snap = replace(snap, metrics_port=self.exporter_port)
        if not snap.listeners and not self.proxy.alive():
            self.current = snap
            return "idle"  # nothing to serve yet: do not start a proxy for nothing
        if self.current is None or not self.proxy.alive():
            return self._full(snap)
        d = diff(self.current, snap)
        if d.reload:
            return self._full(snap)
        now, later = runtime_commands(d, snap)
        try:
            for cmd in now:
                self.proxy.send(cmd)
                self.runtime_commands += 1
        except (HaproxyError, OSError) as e:
            log.warning("runtime update failed (%s); reloading instead", e)
            return self._full(snap)
        self.pending_deletes += later
        self.current = snap
        return "updated" if now else "unchanged"

    def in_flight(self, allocation: str) -> int:
        """Requests this node's proxy is still serving on any endpoint of ``allocation``."""
        if self.proxy is None or not self.proxy.alive():
            return 0
        try:
            text = self.proxy.send("show stat -1 4 -1")  # servers of every backend
        except (HaproxyError, OSError):
            return 0
        prefix = f"e_{allocation}-"
        total = 0
        for line in text.splitlines():
            cols = line.split(",")
            if len(cols) > 4 and cols[1].startswith(prefix) and cols[4].isdigit():
                total += int(cols[4])  # scur: current sessions
        return total

    def delete_drained(self) -> None:
        with self._lock:
            self._delete_drained()

    def _delete_drained(self) -> None:
        assert self.proxy is not None
        keep = []
        for cmd in self.pending_deletes:
            try:
                self.proxy.send(cmd)
            except HaproxyError as e:
                if "no such server" not in str(e).lower():  # gone already (a reload): done
                    keep.append(cmd)  # still has connections: try again later
            except OSError:
                keep.append(cmd)
        self.pending_deletes = keep[-1000:]

    async def run(self) -> None:
        """Follow the server's snapshot stream: apply the newest snapshot, acknowledge it,
        and delete drained servers on the side (so that a drain never delays the next
        change)."""
        if self.proxy is None:
            log.warning("no haproxy binary: the service mesh is off on this node")
            return
        mailbox: list[MeshSnapshot] = []  # the newest snapshot not applied yet
        arrived = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._receive(mailbox, arrived))
            tg.create_task(self.access_log.run())
            tg.create_task(self._delete_drained_loop())
            while True:
                await arrived.wait()
                arrived.clear()
                snap = mailbox.pop()
                try:
                    done = await asyncio.to_thread(self.apply, snap)
                except (HaproxyError, OSError) as e:
                    log.error("cannot apply mesh version %d: %s", snap.version, e)
                    await asyncio.sleep(1.0)
                    if not mailbox:  # nothing newer came: try this one again
                        mailbox.append(snap)
                    arrived.set()
                    continue
                if done not in ("unchanged", "idle"):
                    log.info("mesh version %d: %s", snap.version, done)
                if not snap.ack_wanted:
                    continue  # the server acks only matter while an instance drains
                try:
                    await self.client().mesh_ack(self.node_id, snap.version)
                except ClientError as e:
                    log.warning("cannot acknowledge mesh version %d: %s", snap.version, e.message)

    async def _receive(self, mailbox: list[MeshSnapshot], arrived: asyncio.Event) -> None:
        while True:
            try:
                async for snap in self.client().mesh_stream(self.node_id):
                    mailbox[:] = [snap]  # only the newest matters
                    arrived.set()
            except ClientError as e:
                log.warning("mesh snapshot stream: %s", e.message)
            await asyncio.sleep(1.0)

    async def _delete_drained_loop(self) -> None:
        while True:
            await asyncio.sleep(DRAIN_SECONDS)
            if self.pending_deletes:
                await asyncio.to_thread(self.delete_drained)

    def _restart(self) -> None:
        with self._lock:
            if self.proxy is not None and self.current is not None and not self.proxy.alive():
                self.proxy.ensure(self._config(self.current))
                self.access_log.wake()

    def rotate_log(self) -> bool:
        """Rotate the access log when it passed ``LOG_MAX_BYTES``; True when it did."""
        return rotate(self.log_path, LOG_MAX_BYTES, LOG_FILES - 1)

    async def supervise(self) -> None:
        """Start the proxy again when it dies; keep its log within bounds."""
        if self.proxy is None:
            return
        while True:
            await asyncio.sleep(1.0)
            try:
                await asyncio.to_thread(self.rotate_log)
            except OSError as e:
                log.warning("cannot rotate the mesh access log: %s", e)
            if self.current is not None and self.current.listeners and not self.proxy.alive():
                log.warning("haproxy is not running; starting it again")
                try:
                    await asyncio.to_thread(self._restart)
                except (HaproxyError, OSError) as e:
                    log.error("cannot restart haproxy: %s", e)
