"""``elastin top``'s service table: the measured p99 of a service that has one (autoscaled on
p99: ``p99_response_ms`` in the metrics API), the longest response otherwise, the cell saying
which — through the real command against a scripted API, and the table on its own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from cli_support import FakeApi
from click.testing import Result
from rich.console import Console

from elastin.cli import views

Run = Callable[..., Result]


def service(app: str, name: str) -> dict[str, Any]:
    return {"app": app, "name": name, "type": "service", "running": 1, "desired": 1}


def metrics(app: str, name: str, total: dict[str, float | None]) -> dict[str, Any]:
    """The metrics API's answer for one second: every metric's current value and series."""
    return {
        "app": app,
        "service": name,
        "at": 100,
        "times": [100],
        "total": {k: {"current": v, "series": [v]} for k, v in total.items()},
        "ports": {},
        "replicas": {},
    }


MEASURED = {"requests_per_s": 40.0, "max_response_ms": 240.0, "p99_response_ms": 87.4}
NOT_MEASURED = {"requests_per_s": 5.0, "max_response_ms": 240.0, "p99_response_ms": None}


def text(rows: list[dict[str, Any]]) -> str:
    console = Console(width=200, force_terminal=False)
    with console.capture() as out:
        console.print(views.services_live_table(rows))
    return out.get()


def row(name: str, total: dict[str, float | None]) -> dict[str, Any]:
    return {"app": "shop", "name": name, "total": total, "replicas": {}, "app_metrics": []}


def line_of(out: str, name: str) -> str:
    return next(x for x in out.splitlines() if name in x)


def test_the_cell_shows_the_measured_p99_and_else_the_longest_saying_which() -> None:
    out = text(
        [
            row("api", MEASURED),
            row("web", NOT_MEASURED),
            row("idle", {"max_response_ms": None, "p99_response_ms": None}),
        ]
    )
    assert "P99 / MAX" in out and "MAX (>= p99)" not in out, out
    assert "87ms p99" in line_of(out, "shop/api"), out
    assert "240ms" not in line_of(out, "shop/api"), out
    assert "240ms max" in line_of(out, "shop/web"), out
    assert "p99" not in line_of(out, "shop/web"), out
    assert "max" not in line_of(out, "shop/idle"), out


def test_top_once_shows_p99_for_the_service_that_measures_it(
    api: FakeApi, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(views, "console", Console(width=200, force_terminal=False))
    api.on("GET", "/v1/allocations", [])
    api.on("GET", "/v1/services", [service("shop", "api"), service("shop", "web")])
    api.on("GET", "/v1/metrics/services/shop/api", metrics("shop", "api", MEASURED))
    api.on("GET", "/v1/metrics/services/shop/web", metrics("shop", "web", NOT_MEASURED))
    res = run("top", "--once")
    assert res.exit_code == 0, res.output
    assert "P99 / MAX" in res.output, res.output
    assert "87ms p99" in line_of(res.output, "shop/api"), res.output
    assert "240ms max" in line_of(res.output, "shop/web"), res.output
