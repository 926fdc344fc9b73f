"""``elastin store check``: a whole state file exits 0, a damaged or missing one exits 1 with
what to do; it reads only, so it runs beside a server that has the file open."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from elastin.cli.common import errors
from elastin.cli.main import cli
from elastin.store import SqliteStore, StoreFullError


def _check(data_dir: Path, *args: str) -> Result:
    return CliRunner().invoke(
        cli, ["store", "check", *args], env={"ELASTIN_DATA_DIR": str(data_dir)}
    )


async def _fill(path: Path) -> SqliteStore:
    s = SqliteStore(path)
    for i in range(3):
        await s.txn(puts=[(f"/k/{i}/{j}", "x" * 1000) for j in range(50)])
    return s


def test_a_whole_file_exits_0_even_while_a_store_has_it_open(tmp_path: Path) -> None:
    async def main() -> None:
        s = await _fill(tmp_path / "state.db")
        try:
            res = await asyncio.to_thread(_check, tmp_path)  # the store's WAL is live
            assert res.exit_code == 0, res.output
            assert "is whole" in res.output and "revision 3" in res.output
        finally:
            await s.close()

    asyncio.run(main())


def test_a_damaged_file_exits_1_and_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "state.db"

    async def main() -> None:
        await (await _fill(path)).close()

    asyncio.run(main())
    size = path.stat().st_size
    with open(path, "r+b") as f:
        for off in range(4 * 4096, size - 4 * 4096, 4096):
            f.seek(off)
            f.write(b"\xa5" * 4096)
    res = _check(tmp_path)
    assert res.exit_code == 1
    out = res.output + res.stderr
    assert "damaged" in out and "backup" in out
    assert f"mv {path} {path}.damaged" in out.replace("\n", " ").replace("  ", " ")
    assert "Traceback" not in out


@pytest.mark.parametrize("where", ["data dir", "--file"])
def test_a_missing_file_exits_1(tmp_path: Path, where: str) -> None:
    args = ["--file", str(tmp_path / "other.db")] if where == "--file" else []
    res = _check(tmp_path, *args)
    assert res.exit_code == 1
    assert "there is no state database" in res.output + res.stderr


@pytest.mark.parametrize("grouped", [False, True])
def test_store_errors_print_as_one_message(
    grouped: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a server's task group raises when its store breaks, said as one message."""
    err = StoreFullError("/data/state.db", "/data")
    with pytest.raises(SystemExit) as ex, errors():
        raise ExceptionGroup("server", [err]) if grouped else err
    assert ex.value.code == 1
    out = " ".join(capsys.readouterr().err.split())
    assert "error: the data directory's disk is full: /data/state.db cannot be written" in out
    assert "free space on /data" in out


def test_other_exception_groups_are_not_swallowed() -> None:
    with pytest.raises(ExceptionGroup), errors():
        raise ExceptionGroup("server", [ValueError("x")])
