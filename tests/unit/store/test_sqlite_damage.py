"""A damaged ``state.db``: refused at open with what to do, broken for good (said once) when
found while running, and ``check_file`` tells a whole file from a damaged one (read-only)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from elastin.store import (
    SqliteStore,
    StoreCorruptError,
    StoreError,
    check_file,
    open_store,
    raise_on_failure,
)

PAGE = 4096


async def _state(path: Path, batches: int = 3, per: int = 50) -> SqliteStore:
    """A store at ``path`` holding ``batches`` × ``per`` keys of 1 KB each."""
    s = SqliteStore(path)
    for i in range(batches):
        await s.txn(puts=[(f"/k/{i:03d}/{j:03d}", "x" * 1000) for j in range(per)])
    return s


async def _written(path: Path, batches: int = 3) -> None:
    s = await _state(path, batches)
    await s.close()  # the last close checkpoints the WAL into the file and removes it


def _overwrite_middle(path: Path) -> None:
    """Garbage over every page but the first and last few (a disk that lost a write)."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        for off in range(4 * PAGE, size - 4 * PAGE, PAGE):
            f.seek(off)
            f.write(b"\xa5" * PAGE)


def _says_what_to_do(e: StoreError, path: Path) -> None:
    text = str(e)
    assert str(path) in text and "damaged" in text
    assert "backup" in text and "elastin store check" in text and f"mv {path}" in text


async def test_a_truncated_file_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    await _written(path)
    os.truncate(path, path.stat().st_size // 3)
    with pytest.raises(StoreCorruptError) as caught:
        SqliteStore(path)
    _says_what_to_do(caught.value, path)
    assert "truncated" in str(caught.value)
    assert caught.value.path == str(path)


async def test_a_page_overwritten_in_the_middle_is_refused_at_open(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    await _written(path)
    _overwrite_middle(path)
    with pytest.raises(StoreCorruptError) as caught:
        SqliteStore(path)
    _says_what_to_do(caught.value, path)


async def test_a_foreign_file_is_refused_and_an_empty_one_starts_empty(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database" * 100)
    with pytest.raises(StoreCorruptError, match="not an Elastin state database"):
        SqliteStore(junk)
    empty = tmp_path / "empty.db"
    empty.touch()
    s = SqliteStore(empty)
    assert await s.revision() == 0
    await s.close()


async def test_damage_found_while_running_breaks_the_store_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.db"
    # more than SQLite's page cache (2 MB): replaying the history reads pages from the file
    await _written(path, batches=60)
    s = SqliteStore(path)  # whole when opened (checked)
    _overwrite_middle(path)
    caplog.set_level(logging.CRITICAL, "elastin.store")
    with pytest.raises(StoreCorruptError) as first:
        async for _ in s.watch("/", 1):
            pass
    _says_what_to_do(first.value, path)
    assert await s.failed() is first.value
    # every later call says the same at once, reads included: nothing runs on a damaged file
    for call in (s.put("/x", 1), s.get("/k/000/000"), s.revision(), s.list("/")):
        with pytest.raises(StoreCorruptError):
            await call
    with pytest.raises(StoreCorruptError):
        await raise_on_failure(s)
    assert len([r for r in caplog.records if r.levelno == logging.CRITICAL]) == 1
    await s.close()  # still closes


async def test_check_file_reads_only_and_tells_whole_from_damaged(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    s = await _state(path)
    report = check_file(path)  # while the store has it open, its WAL not checkpointed
    assert report.ok and report.problems == [] and report.revision == 3 and report.keys == 150
    await s.close()
    before = sorted(p.name for p in tmp_path.iterdir())
    assert check_file(path).ok
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # wrote nothing beside it
    _overwrite_middle(path)
    bad = check_file(path)
    assert not bad.ok and bad.problems
    missing = check_file(tmp_path / "nope.db")
    assert not missing.ok and "does not exist" in missing.problems[0]


def test_sqlite_urls_name_the_file_with_one_leading_slash(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"not a database" * 100)
    # what ServerConfig builds: sqlite:/// + an absolute path
    with pytest.raises(StoreCorruptError) as caught:
        open_store(f"sqlite:///{path}")
    assert caught.value.path == str(path) and "//" not in caught.value.path


async def test_another_programs_database_is_neither_taken_over_nor_judged_differently(
    tmp_path: Path,
) -> None:
    """A typo in --store wrote Elastin's tables into another program's SQLite file, which
    `elastin store check` then called "not an Elastin state database"; an empty file was
    fine for the server and "damaged" for the check."""
    import sqlite3

    other = tmp_path / "other.db"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE users (name TEXT)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match=r"not an Elastin state database.*users"):
        SqliteStore(other)
    db = sqlite3.connect(other)
    assert {r[0] for r in db.execute("SELECT name FROM sqlite_master")} == {"users"}
    db.close()
    report = check_file(other)
    assert not report.ok and "its tables: users" in report.problems[0]
    empty = tmp_path / "empty.db"
    empty.touch()
    assert check_file(empty).ok  # a server starts it afresh, and says so alike


def test_check_file_says_what_it_cannot_read_instead_of_raising(tmp_path: Path) -> None:
    as_dir = tmp_path / "state.db"
    as_dir.mkdir()
    report = check_file(as_dir)
    assert not report.ok and report.problems == ["cannot read it: Is a directory"]
