"""inventory: stock per product. GET /stock/<id>, POST /reserve {id, qty}, GET /healthz."""

from __future__ import annotations

import threading
from typing import Any

from shoplib import serve

_lock = threading.Lock()
_stock: dict[str, int] = {}


def _initial(pid: str) -> int:
    return 20 + sum(map(ord, pid)) % 30  # deterministic, so every replica agrees at start


def stock(path: str, _body: Any) -> tuple[int, Any]:
    pid = path.rsplit("/", 1)[-1]
    with _lock:
        return 200, {"id": pid, "stock": _stock.setdefault(pid, _initial(pid))}


def reserve(_path: str, body: Any) -> tuple[int, Any]:
    if not isinstance(body, dict) or not isinstance(body.get("qty"), int) or body["qty"] < 1:
        return 400, {"error": 'send {"id": ..., "qty": N} with N >= 1'}
    pid = str(body.get("id"))
    with _lock:
        left = _stock.setdefault(pid, _initial(pid))
        if left < body["qty"]:  # the warehouse restocks when a shelf runs empty
            left += 50
        _stock[pid] = left - body["qty"]
        return 200, {"id": pid, "reserved": body["qty"], "stock": _stock[pid]}


def healthz(_path: str, _body: Any) -> tuple[int, Any]:
    return 200, {"ok": True}


if __name__ == "__main__":
    serve(
        "inventory",
        {("GET", "/stock/"): stock, ("POST", "/reserve"): reserve, ("GET", "/healthz"): healthz},
        18082,
    )
