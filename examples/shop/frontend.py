"""frontend: the shop's front door. GET / lists products with stock (calls catalog and
inventory), POST /order {id, qty} checks the catalog and reserves in inventory, GET /healthz
is this process alone, GET /readyz checks both upstreams."""

from __future__ import annotations

from typing import Any

from shoplib import call, serve, upstream_url

CATALOG = upstream_url("catalog", "http://127.0.0.1:18081")
INVENTORY = upstream_url("inventory", "http://127.0.0.1:18082")


def index(_path: str, _body: Any) -> tuple[int, Any]:
    products = call("catalog", f"{CATALOG}/products")
    for p in products:
        p["stock"] = call("inventory", f"{INVENTORY}/stock/{p['id']}")["stock"]
    return 200, {"shop": "elastin demo shop", "products": products}


def order(_path: str, body: Any) -> tuple[int, Any]:
    if not isinstance(body, dict) or "id" not in body:
        return 400, {"error": 'send {"id": ..., "qty": N}'}
    product = call("catalog", f"{CATALOG}/products/{body['id']}")
    reserved = call(
        "inventory", f"{INVENTORY}/reserve", {"id": body["id"], "qty": int(body.get("qty", 1))}
    )
    return 200, {
        "ordered": product["name"],
        "qty": reserved["reserved"],
        "total": round(product["price"] * reserved["reserved"], 2),
    }


def healthz(_path: str, _body: Any) -> tuple[int, Any]:
    return 200, {"ok": True}


def readyz(_path: str, _body: Any) -> tuple[int, Any]:
    call("catalog", f"{CATALOG}/healthz")
    call("inventory", f"{INVENTORY}/healthz")
    return 200, {"ready": True}


if __name__ == "__main__":
    serve(
        "frontend",
        {
            ("GET", "/"): index,
            ("POST", "/order"): order,
            ("GET", "/healthz"): healthz,
            ("GET", "/readyz"): readyz,
        },
        18080,
    )
