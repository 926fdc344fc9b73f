"""Which haproxy the mesh runs (``ELASTIN_HAPROXY``, the one ``make setup`` built, PATH) and
the warning for one older than 3.0, with small scripts standing in for the binary."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

from elastin.mesh.haproxy.process import haproxy_binary, haproxy_version, older_than_wanted


def fake_haproxy(tmp_path: Path, version: str) -> str:
    path = tmp_path / "haproxy"
    path.write_text(
        f"#!/bin/sh\necho 'HAProxy version {version} 2026/10/17 - https://haproxy.org/'\n"
    )
    path.chmod(0o755)
    return str(path)


def test_elastin_haproxy_names_the_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = fake_haproxy(tmp_path, "3.0.11-1+deb13u3")
    monkeypatch.setenv("ELASTIN_HAPROXY", binary)
    assert haproxy_binary() == binary


def test_elastin_haproxy_naming_no_executable_turns_the_mesh_off_loudly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "text").write_text("not a program")
    for wrong in (str(tmp_path / "missing"), str(tmp_path / "text")):
        monkeypatch.setenv("ELASTIN_HAPROXY", wrong)
        with caplog.at_level(logging.ERROR):
            assert haproxy_binary() is None
        assert f"ELASTIN_HAPROXY={wrong!r} is not an executable file" in caplog.text


def test_without_elastin_haproxy_the_one_setup_built_comes_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ELASTIN_HAPROXY", raising=False)
    built = Path(sys.prefix) / "bin" / "haproxy"
    if not (built.is_file() and os.access(built, os.X_OK)):
        pytest.skip("make setup built no haproxy into this environment")
    assert haproxy_binary() == str(built)


def test_a_haproxy_older_than_3_0_is_named_with_what_it_gets_wrong(tmp_path: Path) -> None:
    old = fake_haproxy(tmp_path, "2.6.12-1+deb12u4")
    assert haproxy_version(old) == (2, 6)
    why = older_than_wanted(old)
    assert why is not None and "HAProxy 2.6" in why and "cuts short" in why
    assert "make setup" in why


def test_3_0_and_unknown_versions_get_no_warning(tmp_path: Path) -> None:
    assert older_than_wanted(fake_haproxy(tmp_path, "3.0.11-1+deb13u3")) is None
    silent = tmp_path / "silent"
    silent.mkdir()
    assert haproxy_version(fake_haproxy(silent, "unknown")) is None
    assert older_than_wanted(str(silent / "haproxy")) is None
