"""The API token: every call to the server carries ``Authorization: Bearer <token>``.

The token is made at the server's first start and kept in ``<data_dir>/token`` with mode
0600, readable by its owner only; the CLI, the SDK and a local agent read it from there.
Checking it is ``elastin.auth`` (shared with the agents' APIs); ``token_matches`` is
re-exported here.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from elastin.auth import token_matches

__all__ = ["TOKEN_FILE", "ensure_token", "token_hint", "token_matches"]

TOKEN_FILE = "token"


def ensure_token(data_dir: Path) -> str:
    """Return the server's token, creating it (0600) on first start."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / TOKEN_FILE
    if path.exists():
        token = path.read_text().strip()
        if token:
            os.chmod(path, 0o600)
            return token
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def token_hint(data_dir: Path) -> str:
    """Where a caller refused for want of the token finds it (the 401 body's hint)."""
    return (
        f"send 'Authorization: Bearer <token>'; the token is in "
        f"{data_dir / TOKEN_FILE} (readable by its owner only)"
    )
