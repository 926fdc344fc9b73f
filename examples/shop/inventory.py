"""inventory: stock per product, a gRPC service (``shop.Inventory``).

Methods (JSON documents as messages, see shoplib): ``Stock {id}`` -> ``{id, stock}``,
``Reserve {id, qty}`` -> ``{id, reserved, stock}``; and the standard gRPC health check.
"""

from __future__ import annotations

import threading
from typing import Any

import grpc
from shoplib import GrpcFailure, serve_grpc

_lock = threading.Lock()
_stock: dict[str, int] = {}


def _initial(pid: str) -> int:
    return 20 + sum(map(ord, pid)) % 30  # deterministic, so every replica agrees at start


def stock(body: Any) -> Any:
    if not isinstance(body, dict) or "id" not in body:
        raise GrpcFailure(grpc.StatusCode.INVALID_ARGUMENT, 'send {"id": ...}')
    pid = str(body["id"])
    with _lock:
        return {"id": pid, "stock": _stock.setdefault(pid, _initial(pid))}


def reserve(body: Any) -> Any:
    if not isinstance(body, dict) or not isinstance(body.get("qty"), int) or body["qty"] < 1:
        raise GrpcFailure(
            grpc.StatusCode.INVALID_ARGUMENT, 'send {"id": ..., "qty": N} with N >= 1'
        )
    pid = str(body.get("id"))
    with _lock:
        left = _stock.setdefault(pid, _initial(pid))
        if left < body["qty"]:  # the warehouse restocks when a shelf runs empty
            left += 50
        _stock[pid] = left - body["qty"]
        return {"id": pid, "reserved": body["qty"], "stock": _stock[pid]}


if __name__ == "__main__":
    serve_grpc("inventory", "shop.Inventory", {"Stock": stock, "Reserve": reserve}, 18082)
