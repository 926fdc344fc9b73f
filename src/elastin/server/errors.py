"""Exceptions of the server package; the API turns them into HTTP responses.

Hierarchy::

    ServerError                 root (500)
     ├── NotFound               404: no such application / service / allocation / node
     ├── Conflict               409: the request conflicts with the current state
     ├── Invalid                400/422: the request is malformed; carries ``issues``
     ├── StoreFull              507: the data directory's disk is full (nothing was changed)
     └── StoreUnavailable       503: the state store cannot serve (damaged, closed, failed)

``from_store_error`` says a state store error as one of these (the API answers every
``StoreError`` through it, never with a bare 500).
"""

from __future__ import annotations

from typing import Any

from elastin.store.base import StoreClosedError, StoreCorruptError, StoreError, StoreFullError


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


class StoreFull(ServerError):
    status = 507  # Insufficient Storage


class StoreUnavailable(ServerError):
    status = 503


def from_store_error(e: StoreError) -> ServerError:
    """What the API answers for a state store error: what is wrong, where, what to do."""
    if isinstance(e, StoreFullError):
        return StoreFull(
            f"the data directory's disk is full: the state database {e.path} cannot be "
            f"written, so nothing was changed; free space on {e.filesystem}",
            hint=f"free space on {e.filesystem} (`df -h {e.filesystem}`) and try again; "
            "`elastin stop` and `elastin down` use the space Elastin keeps in reserve",
        )
    if isinstance(e, StoreCorruptError):
        return StoreUnavailable(
            f"the state database {e.path} is damaged ({e.problem}); the server stops",
            hint=e.hint,
        )
    if isinstance(e, StoreClosedError):
        return StoreUnavailable("the server is stopping", hint="try again in a moment")
    return StoreUnavailable(f"the state store failed: {e}", hint="see the server's log")
