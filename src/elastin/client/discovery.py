"""Finding the server: ``ELASTIN_ADDR`` and ``ELASTIN_TOKEN`` when set, otherwise the
``server.json`` and ``token`` files the server keeps in its data directory.

The data directory is ``ELASTIN_DATA_DIR`` when set, else ``/var/lib/elastin`` for root and
``~/.local/share/elastin`` for other users.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from elastin.client.errors import ServerUnavailable


def default_data_dir() -> Path:
    env = os.environ.get("ELASTIN_DATA_DIR")
    if env:
        return Path(env).expanduser().resolve()
    if os.geteuid() == 0:
        return Path("/var/lib/elastin")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "elastin"


def read_token(data_dir: Path) -> str | None:
    try:
        return (data_dir / "token").read_text().strip() or None
    except OSError:
        return None


def running_server(data_dir: Path) -> tuple[str, int] | None:
    """URL and pid from ``server.json`` when that server process is still alive."""
    try:
        info = json.loads((data_dir / "server.json").read_text())
        url, pid = str(info["url"]), int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    if _zombie(pid):  # killed, not yet reaped (its parent is gone): it serves nothing
        return None
    return url, pid


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def find_server(data_dir: Path | None = None) -> tuple[str, str]:
    """Return ``(url, token)`` of the server to talk to, or raise ``ServerUnavailable``."""
    data_dir = data_dir or default_data_dir()
    url = os.environ.get("ELASTIN_ADDR")
    token = os.environ.get("ELASTIN_TOKEN") or read_token(data_dir)
    if not url:
        found = running_server(data_dir)
        if not found:
            raise ServerUnavailable(
                f"no Elastin server is running (nothing in {data_dir})",
                hint="start one with `elastin up FILE` or `elastin server`, "
                "or point ELASTIN_ADDR at a running server",
            )
        url = found[0]
    if not token:
        raise ServerUnavailable(
            f"no API token found in {data_dir / 'token'}",
            hint="set ELASTIN_TOKEN, or run as the user that started the server",
        )
    return url, token
