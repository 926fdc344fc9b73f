"""The state store on a full disk: a real tmpfs of a few MiB as the data directory (mounted
here, unmounted in teardown), filled to ENOSPC by a file beside ``state.db``.

A write that meets the full disk releases the reserve file and is retried; ``stop`` and
``down`` (the CLI against a real server) succeed; a write that still finds no room fails with
"the data directory's disk is full … free space on <mount point>", nothing of it applied."""

from __future__ import annotations

import errno
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from store_cli import elastin, server_process

from elastin.store import SqliteStore, StoreFullError
from elastin.store import sqlite as sqlite_store
from elastin.store.base import deferrable

KiB = 1024


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs mounted on a fresh directory, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "fs"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(directory: Path, name: str) -> int:
    """Write ``directory/name`` until the filesystem is full; the bytes written."""
    written = 0
    fd = os.open(directory / name, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
    try:
        for chunk in (64 * KiB, 4 * KiB, 512, 1):
            while True:
                try:
                    written += os.write(fd, b"\0" * chunk)
                except OSError as e:
                    assert e.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    return written


async def test_a_write_on_a_full_disk_releases_the_reserve_then_fails_clearly(
    tmpfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "RESERVE_RETRY_EVERY", 0.0)
    monkeypatch.setattr(sqlite_store, "FULL_FAST_FOR", 3600.0)  # not over during the test
    s = SqliteStore(tmpfs / "state.db", reserve_bytes=512 * KiB, full_backoff=(0.01, 0.02))
    reserve = tmpfs / "state.db.reserve"
    assert reserve.stat().st_size == 512 * KiB and s.stats()["reserve_bytes"] == 512 * KiB
    await s.put("/apps/a", {"n": 1})
    fill(tmpfs, "filler-1")

    # the reserve's space lets this write commit (more than the WAL has spare)
    rev = await s.put("/apps/a", {"n": 2, "pad": "x" * (128 * KiB)})
    assert not reserve.exists()
    stats = s.stats()
    assert stats["writes_disk_full"] >= 1 and stats["reserve_bytes"] == 0
    assert stats["writes_refused"] == 0

    fill(tmpfs, "filler-2")  # full again, and no reserve left
    tried = s.stats()["writes_disk_full"]
    with pytest.raises(StoreFullError) as caught:
        await s.put("/apps/b", {"pad": "y" * (256 * KiB)})
    message = str(caught.value)
    assert "the data directory's disk is full" in message
    assert f"free space on {tmpfs}" in message and caught.value.filesystem == str(tmpfs)
    assert s.stats()["writes_refused"] == 1
    assert s.stats()["writes_disk_full"] == tried + 1  # one write (retried twice)
    # right after a refusal the next write gets one try, not the whole backoff again
    before = s.stats()["writes_disk_full"]
    with pytest.raises(StoreFullError):
        await s.put("/apps/b", {"pad": "y" * (256 * KiB)})
    assert s.stats()["writes_disk_full"] == before + 1 and s.stats()["writes_refused"] == 2
    # nothing of it was applied, and what was committed before is all there
    assert await s.get("/apps/b") is None and await s.revision() == rev

    for f in ("filler-1", "filler-2"):
        (tmpfs / f).unlink()
    await s.put("/apps/c", 1)  # space is back: writable, and the reserve is made again
    assert reserve.stat().st_size == 512 * KiB and s.stats()["reserve_bytes"] == 512 * KiB
    await s.close()

    again = SqliteStore(tmpfs / "state.db")  # what was committed survives
    assert (await again.get("/apps/a")).value["n"] == 2  # type: ignore[union-attr]
    await again.close()


async def test_background_upkeep_never_takes_the_reserve(tmpfs: Path) -> None:
    """With a server and an agent the node's heartbeat timestamp was saved every 10 s: the
    first of those to meet the full disk took the reserve, and `stop`/`down` were refused."""
    s = SqliteStore(tmpfs / "state.db", reserve_bytes=512 * KiB, full_backoff=(0.01,))
    reserve = tmpfs / "state.db.reserve"
    await s.put("/apps/a", {"n": 1})
    fill(tmpfs, "filler")
    with deferrable(), pytest.raises(StoreFullError):  # refused at once, reserve untouched
        await s.put("/nodes/n1", {"pad": "h" * (256 * KiB)})
    assert reserve.stat().st_size == 512 * KiB
    await s.put("/apps/a", {"n": 2, "pad": "s" * (128 * KiB)})  # a stop: through the reserve
    assert not reserve.exists() and (await s.get("/apps/a")).value["n"] == 2  # type: ignore[union-attr]
    await s.close()


SPEC = """app: t
services:
  web:
    command: ["python3", "-c", "import time; time.sleep(60)"]
    resources: {cpu: 100m, memory: 32Mi}
"""


def test_stop_and_down_work_on_a_full_disk_and_an_apply_is_refused_clearly(
    tmpfs: Path, tmp_path: Path
) -> None:
    spec = tmp_path / "t.yaml"
    spec.write_text(SPEC)
    big = tmp_path / "big.yaml"  # an application that needs room of its own to be recorded
    pad = "z" * 100_000  # 300 kB in all, within a workload's environment limits (docs/spec.md)
    big.write_text(
        SPEC.replace("app: t", "app: big")
        + f'    env: {{PAD1: "{pad}", PAD2: "{pad}"}}\n'
        + SPEC.split("services:\n")[1].replace("web:", "web2:")
        + f'    env: {{PAD: "{pad}"}}\n'
    )
    with server_process(tmpfs) as (server, url, token):
        assert (tmpfs / "state.db.reserve").exists()
        done = elastin(tmpfs, "apply", str(spec))
        assert done.returncode == 0, done.stdout + done.stderr

        fill(tmpfs, "filler-1")
        for args in (["stop", "web"], ["down"]):
            done = elastin(tmpfs, *args)
            assert done.returncode == 0, (args, done.stdout + done.stderr)
        assert not (tmpfs / "state.db.reserve").exists()  # what let them commit
        apps = elastin(tmpfs, "status")
        assert apps.returncode == 0, apps.stdout + apps.stderr

        fill(tmpfs, "filler-2")  # the reserve's space taken too: the disk stays full
        done = elastin(tmpfs, "apply", str(big))
        out = " ".join((done.stdout + done.stderr).split())
        assert done.returncode == 1, out
        assert "Traceback" not in out and "500" not in out
        assert "the data directory's disk is full" in out and f"free space on {tmpfs}" in out

        metrics = httpx.get(
            f"{url}/v1/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10
        ).text
        refused = re.search(r"^elastin_store_writes_refused_total (\S+)$", metrics, re.M)
        full = re.search(r"^elastin_store_writes_disk_full_total (\S+)$", metrics, re.M)
        assert refused and float(refused[1]) >= 1 and full and float(full[1]) >= 2
        assert server.poll() is None  # still serving
