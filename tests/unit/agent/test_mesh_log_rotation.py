"""The mesh access log (HAProxy's stdout, a line per request) is kept within bounds: the
manager rotates it copy-truncate, so HAProxy goes on writing to the same file."""

from __future__ import annotations

from pathlib import Path

import pytest

from elastin.agent import mesh
from elastin.agent.mesh import MeshManager
from elastin.testing import FakeProxy


def test_the_access_log_is_rotated_and_old_copies_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mesh, "LOG_MAX_BYTES", 100)
    manager = MeshManager(lambda: None, "n1", tmp_path, FakeProxy())  # type: ignore[arg-type,return-value]
    log = tmp_path / "haproxy.log"
    with open(log, "ab") as writer:  # as HAProxy's stdout: appending
        for round_ in range(5):
            writer.write(f'{{"round":{round_}}}\n'.encode() * 10)
            writer.flush()
            assert manager.rotate_log()
            assert log.stat().st_size == 0
        writer.write(b'{"round":5}\n')
        writer.flush()
    assert not manager.rotate_log()  # small again: left alone
    assert log.read_bytes() == b'{"round":5}\n'  # written at the new end, not past a hole
    kept = sorted(p.name for p in tmp_path.glob("haproxy.log.*"))
    assert kept == ["haproxy.log.1", "haproxy.log.2"]  # LOG_FILES in all, with the live one
    assert b'"round":4' in (tmp_path / "haproxy.log.1").read_bytes()
