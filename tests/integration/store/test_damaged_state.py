"""Real ``elastin`` processes on a damaged ``state.db``: ``server``, ``daemon`` and ``up``
refuse to start with one message and what to do (no traceback); a server that finds damage
while it runs stops, saying so, instead of answering 500 every time it touches the file."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx
import pytest
from store_cli import elastin, server_process

from elastin.store import SqliteStore

PAGE = 4096
SPEC = """app: t
services:
  web:
    command: ["python3", "-c", "import time; time.sleep(60)"]
    resources: {cpu: 100m, memory: 32Mi}
"""


def _write_state(path: Path, batches: int) -> None:
    async def main() -> None:
        s = SqliteStore(path)
        for i in range(batches):
            await s.txn(puts=[(f"/junk/{i:03d}/{j:03d}", "x" * 1000) for j in range(50)])
        await s.close()

    asyncio.run(main())


def _overwrite_middle(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as f:
        for off in range(4 * PAGE, size - 4 * PAGE, PAGE):
            f.seek(off)
            f.write(b"\xa5" * PAGE)


def _damage(path: Path, how: str) -> None:
    if how == "truncated":
        os.truncate(path, path.stat().st_size // 3)
    else:
        _overwrite_middle(path)


@pytest.mark.parametrize("how", ["truncated", "overwritten"])
@pytest.mark.parametrize("command", ["server", "daemon", "up"])
def test_a_damaged_file_is_refused_at_start(tmp_path: Path, command: str, how: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = data / "state.db"
    _write_state(db, 3)
    _damage(db, how)
    spec = tmp_path / "t.yaml"
    spec.write_text(SPEC)
    args = {"server": ["server", "--port", "0"], "daemon": ["daemon", "--port", "0"]}
    res = elastin(data, *args.get(command, ["up", str(spec), "--port", "0"]), timeout=60)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "Traceback" not in out
    flat = " ".join(out.split())
    assert f"the state database {db} is damaged" in flat
    assert "elastin store check" in flat and f"mv {db} {db}.damaged" in flat
    if how == "truncated":
        assert "truncated" in flat


def test_damage_found_while_running_stops_the_server_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = data / "state.db"
    # more than SQLite's page cache (2 MB): a full replay of the history reads the file
    _write_state(db, 80)
    with server_process(data) as (proc, url, token):
        info = data / "server.json"
        _overwrite_middle(db)
        headers = {"Authorization": f"Bearer {token}"}
        try:  # the watch replays every change from revision 1: it meets the damage
            with httpx.stream(
                "GET", f"{url}/v1/watch", params={"from_rev": 1}, headers=headers, timeout=30
            ) as r:
                for _ in r.iter_lines():
                    pass
        except httpx.HTTPError:
            pass  # the server stopped under the stream
        code = proc.wait(timeout=60)
        out = proc.stdout.read() + proc.stderr.read()  # type: ignore[union-attr]
    flat = " ".join(out.split())
    assert code == 1, out
    assert "Traceback" not in out
    assert f"error: the state database {db} is damaged" in flat
    assert "elastin store check" in flat
    # said once by the store's log and once as the command's error, not once a pass
    assert flat.count("is damaged") <= 2
    assert not info.exists()  # a clean stop: clients do not find a dead server
