"""Wires a store, the ``Cluster`` (its rooms), the API and the scheduling loop into one
running server.

``run_server`` serves until cancelled. It writes ``<data_dir>/server.json`` (URL and pid) so
that the CLI, the SDK and a local agent find the server without flags, and removes it on a
clean exit. Signals are the caller's business (the CLI handles Ctrl-C and SIGTERM).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elastin import serving
from elastin.clock import SYSTEM
from elastin.datadir import ensure_private
from elastin.scheduler import SchedulerOptions
from elastin.server.api import create_api
from elastin.server.auth import ensure_token
from elastin.server.cluster import Cluster
from elastin.store import raise_on_failure
from elastin.store.open import open_store

log = logging.getLogger("elastin.server")

DEFAULT_PORT = 4850
SERVER_FILE = "server.json"


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    store_url: str = ""  # default: sqlite in the data directory
    algorithm: str = "binpack"  # or "spread"
    # timeouts, connection caps, body size (elastin.serving); ELASTIN_API_* in the environment
    limits: serving.Limits = field(default_factory=serving.Limits.from_env)

    def store(self) -> str:
        return self.store_url or f"sqlite:///{self.data_dir / 'state.db'}"


def bind(host: str, port: int) -> socket.socket:
    return serving.bind(
        host,
        port,
        what="the server",
        hint="is another Elastin server running? (`elastin status`), or pick another port "
        "with --port",
    )


async def run_server(
    cfg: ServerConfig,
    *,
    on_ready: Callable[[str, str], Coroutine[Any, Any, None]] | None = None,
) -> None:
    """Serve until cancelled. ``on_ready(url, token)`` runs once the API listens."""
    ensure_private(cfg.data_dir)
    token = ensure_token(cfg.data_dir)
    store = open_store(cfg.store())
    options = SchedulerOptions(algorithm="spread" if cfg.algorithm == "spread" else "binpack")
    cluster = await Cluster.open(store, options=options)
    api = create_api(cluster, token, cfg.data_dir)
    sock = bind(cfg.host, cfg.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    server = serving.Server(
        api,
        cfg.limits,
        name="the server's API",
        log_level="warning",
        timeout_graceful_shutdown=5,
    )
    info = cfg.data_dir / SERVER_FILE
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(server.serve(sockets=[sock]))
            for _ in range(500):  # up to 5 s for uvicorn to listen
                if server.started:
                    break
                await SYSTEM.sleep(0.01)
            info.write_text(json.dumps({"url": url, "pid": os.getpid()}))
            # what exists now lives as long as the server: keep it out of the collector's
            # scans, whose pauses showed as the tail of the mesh's propagation time
            gc.freeze()
            tg.create_task(cluster.run())
            tg.create_task(raise_on_failure(store))  # a damaged file: stop, said once
            log.info("server listening on %s (data in %s)", url, cfg.data_dir)
            if on_ready is not None:
                tg.create_task(on_ready(url, token))
            try:
                await asyncio.Event().wait()  # serve until cancelled
            except asyncio.CancelledError:
                # shutting down: in-flight long polls are cancelled on purpose; that is not
                # an error to print
                logging.getLogger("uvicorn.error").disabled = True
                # long polls answer now, so that uvicorn's graceful shutdown does not wait
                # for them (agents ask again, of the next server)
                cluster.close()
                raise
    finally:
        server.should_exit = True
        with contextlib.suppress(FileNotFoundError, OSError):
            current = json.loads(info.read_text())
            if current.get("pid") == os.getpid():
                info.unlink()
        await store.close()
        sock.close()
