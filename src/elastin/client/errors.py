"""Exceptions of the client.

Hierarchy::

    ClientError                 root; ``message`` and ``hint`` are meant for people
     ├── ServerUnavailable      no server answers at the address (or none was found)
     ├── ApiError               the server answered with an error (``status``, ``issues``)
     └── DaemonFailed           a background server started here exited before it answered
"""

from __future__ import annotations

from typing import Any


class ClientError(Exception):
    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def render(self) -> str:
        return self.message + (f"\n  hint: {self.hint}" if self.hint else "")


class ServerUnavailable(ClientError):
    """No server could be reached."""


class ApiError(ClientError):
    def __init__(
        self, status: int, message: str, hint: str = "", issues: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message, hint)
        self.status = status
        self.issues = issues or []


class DaemonFailed(ClientError):
    """A background server (``elastin.client.local.start_daemon``) exited before it answered."""
