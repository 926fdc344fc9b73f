"""``elastin.datadir.ensure_private``: a data directory is root's alone, and a shared
directory given as one is refused rather than broken for everyone (an agent given
ELASTIN_DATA_DIR=/tmp made /tmp 0700 and dropped its sticky bit)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from elastin.datadir import ensure_private


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_a_new_or_own_directory_is_made_0700(tmp_path: Path) -> None:
    new = tmp_path / "a" / "data"
    ensure_private(new)
    assert mode(new) == 0o700
    old = tmp_path / "old"  # an earlier install's, 0755 with Elastin's files in it
    (old / "allocs").mkdir(parents=True)
    old.chmod(0o755)
    ensure_private(old)
    assert mode(old) == 0o700
    sdk = tmp_path / "sdk"  # the SDK wrote its server's log before the server made the rest
    sdk.mkdir()
    (sdk / "sdk-server.log").write_text("")
    sdk.chmod(0o755)
    ensure_private(sdk)
    assert mode(sdk) == 0o700


def test_a_directory_others_use_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    mounted = tmp_path / "mnt"  # an empty file system mounted for it: a tmpfs root is 1777
    mounted.mkdir()
    mounted.chmod(0o1777)
    ensure_private(mounted)
    assert mode(mounted) == 0o700
    shared = tmp_path / "tmp"
    (shared / ".X11-unix").mkdir(parents=True)
    shared.chmod(0o1777)
    with pytest.raises(PermissionError, match="shared with others") as e:
        ensure_private(shared)
    assert e.value.filename == str(shared) and "ELASTIN_DATA_DIR" in str(e.value)
    assert mode(shared) == 0o1777
    home = tmp_path / "home"
    (home / ".bashrc").parent.mkdir()
    (home / ".bashrc").write_text("")
    home.chmod(0o755)
    with pytest.raises(PermissionError):
        ensure_private(home)
    assert mode(home) == 0o755
