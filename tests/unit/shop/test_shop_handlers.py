"""The demo shop's HTTP handlers (examples/shop), called directly: routes match exactly (``/``
no longer answers every path, so ``/readyz`` and ``/healthz`` test what they say), an unknown
path is a 404, a missing product a 404 (not a 502), readiness a 503 naming the upstream that
does not answer, and a connection the client reset is one line in the log, not a traceback."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SHOP = Path(__file__).resolve().parents[3] / "examples" / "shop"


@pytest.fixture
def shop(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, ModuleType]]:
    """The shop's modules, imported fresh from examples/shop (as its processes import them)."""
    monkeypatch.syspath_prepend(str(SHOP))
    names = ("shoplib", "catalog", "frontend")
    for name in names:
        sys.modules.pop(name, None)
    try:
        yield {name: importlib.import_module(name) for name in names}
    finally:
        for name in names:
            sys.modules.pop(name, None)


def test_health_and_unknown_paths_are_not_the_product_list(
    shop: dict[str, ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The finding: /readyz, /healthz and unknown paths all answered the product list with
    200 (the `/` prefix matched first), so the health check tested nothing."""
    lib, frontend = shop["shoplib"], shop["frontend"]
    calls: list[str] = []

    def index(path: str, body: Any) -> tuple[int, Any]:
        calls.append(path)
        return 200, {"products": []}

    routes = {**frontend.ROUTES, ("GET", "/"): index}
    assert lib.dispatch(routes, "GET", "/healthz", None) == (200, {"ok": True})
    assert lib.dispatch(routes, "GET", "/nope", None) == (404, {"error": "no route for GET /nope"})
    assert lib.dispatch(routes, "GET", "/healthz/x", None)[0] == 404
    assert lib.dispatch(routes, "GET", "/?page=2", None) == (200, {"products": []})
    assert calls == ["/"]
    status, out = lib.dispatch(routes, "GET", "/order", None)
    assert (status, out["allow"]) == (405, ["POST"])


def test_readiness_is_a_real_answer(
    shop: dict[str, ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    lib, frontend = shop["shoplib"], shop["frontend"]
    routes = frontend.ROUTES
    monkeypatch.setattr(frontend, "call", lambda upstream, url, body=None: {"ok": True})
    monkeypatch.setattr(frontend, "grpc_serving", lambda upstream, target: True)
    assert lib.dispatch(routes, "GET", "/readyz", None) == (200, {"ready": True})
    monkeypatch.setattr(frontend, "grpc_serving", lambda upstream, target: False)
    assert lib.dispatch(routes, "GET", "/readyz", None) == (
        503,
        {"ready": False, "why": "inventory is not SERVING"},
    )

    def down(upstream: str, url: str, body: Any = None) -> Any:
        raise lib.UpstreamError("catalog", f"Connection refused ({url})")

    monkeypatch.setattr(frontend, "call", down)
    status, out = lib.dispatch(routes, "GET", "/readyz", None)
    assert status == 503 and out["why"].startswith("catalog: Connection refused"), out


def test_an_order_for_a_missing_product_is_a_404(
    shop: dict[str, ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The finding: POST /order {"id": 1} for a missing product answered 502."""
    lib, catalog, frontend = shop["shoplib"], shop["catalog"], shop["frontend"]
    urls: list[str] = []

    def call(upstream: str, url: str, body: Any = None) -> Any:
        """The catalog's own handler behind the call, its errors as ``call`` raises them."""
        urls.append(url)
        status, out = lib.dispatch(catalog.ROUTES, "GET", url.removeprefix(frontend.CATALOG), None)
        if status >= 400:
            raise lib.UpstreamError(upstream, f"HTTP {status} from {url}", status)
        return out

    reserved: list[Any] = []
    monkeypatch.setattr(frontend, "call", call)
    monkeypatch.setattr(
        frontend, "inventory", lambda m, b: reserved.append(b) or {"reserved": b["qty"]}
    )
    routes = frontend.ROUTES
    assert lib.dispatch(routes, "POST", "/order", {"id": 1}) == (404, {"error": "no product '1'"})
    assert lib.dispatch(routes, "POST", "/order", {"id": "a/../p1"})[0] == 404
    assert urls[-1].endswith("/products/a%2F..%2Fp1")  # one path segment, whatever the id
    assert reserved == []  # nothing reserved for a product that is not there
    assert lib.dispatch(routes, "POST", "/order", {"id": "p2", "qty": 2}) == (
        200,
        {"ordered": "milk jug", "qty": 2, "total": 28.0},
    )
    for bad in ({"id": "p2", "qty": "lots"}, {"id": "p2", "qty": 0}, {"qty": 1}, [1]):
        assert lib.dispatch(routes, "POST", "/order", bad)[0] == 400, bad


def test_an_upstream_that_fails_otherwise_is_still_a_502(
    shop: dict[str, ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    lib, frontend = shop["shoplib"], shop["frontend"]

    def broken(upstream: str, url: str, body: Any = None) -> Any:
        raise lib.UpstreamError("catalog", "HTTP 503 from catalog", 503)

    monkeypatch.setattr(frontend, "call", broken)
    status, out = lib.dispatch(frontend.ROUTES, "POST", "/order", {"id": "p1"})
    assert (status, out["upstream"]) == (502, "catalog")


def test_a_handler_that_fails_answers_500(shop: dict[str, ModuleType]) -> None:
    lib = shop["shoplib"]

    def bug(path: str, body: Any) -> tuple[int, Any]:
        raise KeyError("x")

    assert lib.dispatch({("GET", "/x"): bug}, "GET", "/x", None) == (
        500,
        {"error": "KeyError: 'x'"},
    )


def test_catalog_routes(shop: dict[str, ModuleType]) -> None:
    lib, catalog = shop["shoplib"], shop["catalog"]
    routes = catalog.ROUTES
    assert lib.dispatch(routes, "GET", "/products", None)[1][0]["id"] == "p1"
    assert lib.dispatch(routes, "GET", "/products/p3", None)[1]["name"] == "coffee grinder"
    assert lib.dispatch(routes, "GET", "/products/", None)[0] == 404
    assert lib.dispatch(routes, "GET", "/products/p3/x", None)[0] == 404
    assert lib.dispatch(routes, "GET", "/products/nope", None)[0] == 404


def test_a_reset_connection_is_one_line_not_a_traceback(
    shop: dict[str, ModuleType], capsys: pytest.CaptureFixture[str]
) -> None:
    """The finding: the frontend logged a ConnectionResetError traceback at start (a health
    check that closes its connection with a reset)."""
    lib = shop["shoplib"]
    server = lib.ShopServer(("127.0.0.1", 0), lib.BaseHTTPRequestHandler, bind_and_activate=False)
    server.name = "frontend"
    try:
        for err in (
            ConnectionResetError(104, "Connection reset by peer"),
            BrokenPipeError(32, "Broken pipe"),
        ):
            try:
                raise err
            except OSError:
                server.handle_error(None, ("127.0.0.1", 40123))
    finally:
        server.server_close()
    out = capsys.readouterr()
    assert out.out.splitlines() == [
        "frontend: connection from 127.0.0.1:40123 reset by the client",
        "frontend: connection from 127.0.0.1:40123 closed before the answer was sent",
    ]
    assert out.err == ""
