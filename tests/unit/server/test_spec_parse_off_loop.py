"""A spec is parsed off the event loop (``asyncio.to_thread``): a big one (a 20 MB spec took
11.7 s to parse) must not stall every other call the server answers meanwhile. Checked
structurally: the parser runs on another thread than the loop's."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from server_support import api_client

from elastin.server import apps
from elastin.server.cluster import Cluster
from elastin.store.memory import MemoryStore

SPEC = """
app: shop
services:
  web:
    command: python3 -m http.server
    resources: {cpu: 500m, memory: 128Mi}
"""


@pytest.mark.parametrize("spec", [SPEC, "app: ["], ids=["valid", "spec error"])
async def test_the_spec_is_parsed_off_the_loop_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: str
) -> None:
    threads: list[int] = []
    real = apps.parse_spec

    def spy(*args: Any, **kw: Any) -> Any:
        threads.append(threading.get_ident())
        return real(*args, **kw)

    monkeypatch.setattr(apps, "parse_spec", spy)
    cluster = await Cluster.open(MemoryStore(), seed=1)
    async with api_client(cluster, tmp_path) as client:
        r = await client.post("/v1/apps", json={"spec": spec, "dry_run": True})
    assert r.status_code == (200 if spec == SPEC else 422), r.text
    assert threads, "the spec was not parsed"
    assert threading.get_ident() not in threads  # the loop's thread is this one
