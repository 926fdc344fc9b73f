"""frontend: the shop's front door. GET / lists products with stock (calls catalog over HTTP
and inventory over gRPC), POST /order {id, qty} checks the catalog and reserves in inventory
(a product the catalog does not have: 404), GET /healthz is this process alone, GET /readyz
answers 200 when both upstreams answer and 503 naming the one that does not. Any other path
is a 404."""

from __future__ import annotations

import urllib.parse
from typing import Any

from shoplib import (
    Routes,
    UpstreamError,
    call,
    grpc_call,
    grpc_serving,
    serve,
    upstream_addr,
    upstream_url,
)

CATALOG = upstream_url("catalog", "http://127.0.0.1:18081")
INVENTORY = upstream_addr("inventory", "127.0.0.1:18082")  # gRPC: host:port


def inventory(method: str, body: Any) -> Any:
    return grpc_call("inventory", INVENTORY, f"/shop.Inventory/{method}", body)


def index(_path: str, _body: Any) -> tuple[int, Any]:
    products = call("catalog", f"{CATALOG}/products")
    for p in products:
        p["stock"] = inventory("Stock", {"id": p["id"]})["stock"]
    return 200, {"shop": "elastin demo shop", "products": products}


def order(_path: str, body: Any) -> tuple[int, Any]:
    qty = body.get("qty", 1) if isinstance(body, dict) else None
    if not isinstance(body, dict) or "id" not in body or type(qty) is not int or qty < 1:
        return 400, {"error": 'send {"id": ..., "qty": N} with N >= 1'}
    pid = str(body["id"])
    try:
        product = call("catalog", f"{CATALOG}/products/{urllib.parse.quote(pid, safe='')}")
    except UpstreamError as e:
        if e.status == 404:  # the catalog answered: there is no such product
            return 404, {"error": f"no product {pid!r}"}
        raise
    reserved = inventory("Reserve", {"id": pid, "qty": qty})
    return 200, {
        "ordered": product["name"],
        "qty": reserved["reserved"],
        "total": round(product["price"] * reserved["reserved"], 2),
    }


def healthz(_path: str, _body: Any) -> tuple[int, Any]:
    return 200, {"ok": True}


def readyz(_path: str, _body: Any) -> tuple[int, Any]:
    """Ready when both upstreams answer: the catalog's /healthz and inventory's gRPC health."""
    try:
        call("catalog", f"{CATALOG}/healthz")
        if not grpc_serving("inventory", INVENTORY):
            return 503, {"ready": False, "why": "inventory is not SERVING"}
    except UpstreamError as e:
        return 503, {"ready": False, "why": f"{e.upstream}: {e.reason}"}
    return 200, {"ready": True}


ROUTES: Routes = {
    ("GET", "/"): index,
    ("POST", "/order"): order,
    ("GET", "/healthz"): healthz,
    ("GET", "/readyz"): readyz,
}

if __name__ == "__main__":
    serve("frontend", ROUTES, 18080)
