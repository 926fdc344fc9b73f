"""frontend: the shop's front door. GET / lists products with stock (calls catalog over HTTP
and inventory over gRPC), POST /order {id, qty} checks the catalog and reserves in inventory,
GET /healthz is this process alone, GET /readyz checks both upstreams."""

from __future__ import annotations

from typing import Any

from shoplib import call, grpc_call, grpc_serving, serve, upstream_addr, upstream_url

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
    if not isinstance(body, dict) or "id" not in body:
        return 400, {"error": 'send {"id": ..., "qty": N}'}
    product = call("catalog", f"{CATALOG}/products/{body['id']}")
    reserved = inventory("Reserve", {"id": body["id"], "qty": int(body.get("qty", 1))})
    return 200, {
        "ordered": product["name"],
        "qty": reserved["reserved"],
        "total": round(product["price"] * reserved["reserved"], 2),
    }


def healthz(_path: str, _body: Any) -> tuple[int, Any]:
    return 200, {"ok": True}


def readyz(_path: str, _body: Any) -> tuple[int, Any]:
    call("catalog", f"{CATALOG}/healthz")
    if not grpc_serving("inventory", INVENTORY):
        return 503, {"ready": False, "why": "inventory is not SERVING"}
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
