"""catalog: the shop's products. GET /products, GET /products/<id>, GET /healthz."""

from __future__ import annotations

import urllib.parse
from typing import Any

from shoplib import Routes, serve

PRODUCTS = [
    {"id": "p1", "name": "espresso cup", "price": 9.5},
    {"id": "p2", "name": "milk jug", "price": 14.0},
    {"id": "p3", "name": "coffee grinder", "price": 89.0},
    {"id": "p4", "name": "pour-over kettle", "price": 49.0},
    {"id": "p5", "name": "bag of beans", "price": 12.5},
]


def products(_path: str, _body: Any) -> tuple[int, Any]:
    return 200, PRODUCTS


def product(path: str, _body: Any) -> tuple[int, Any]:
    pid = urllib.parse.unquote(path.rsplit("/", 1)[-1])
    for p in PRODUCTS:
        if p["id"] == pid:
            return 200, p
    return 404, {"error": f"no product {pid!r}"}


def healthz(_path: str, _body: Any) -> tuple[int, Any]:
    return 200, {"ok": True}


ROUTES: Routes = {
    ("GET", "/products"): products,
    ("GET", "/products/<id>"): product,
    ("GET", "/healthz"): healthz,
}

if __name__ == "__main__":
    serve("catalog", ROUTES, 18081)
