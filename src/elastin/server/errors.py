"""Exceptions of the server package; the API turns them into HTTP responses.

Hierarchy::

    ServerError                 root (500)
     ├── NotFound               404: no such application / service / allocation / node
     ├── Conflict               409: the request conflicts with the current state
     └── Invalid                400/422: the request is malformed; carries ``issues``
"""

from __future__ import annotations

from typing import Any


class ServerError(Exception):
    status = 500

    def __init__(self, message: str, *, hint: str = "", issues: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.issues = issues or []

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": type(self).__name__, "message": self.message}
        if self.hint:
            out["hint"] = self.hint
        if self.issues:
            out["issues"] = self.issues
        return out


class NotFound(ServerError):
    status = 404


class Conflict(ServerError):
    status = 409


class Invalid(ServerError):
    status = 422
