"""Views that show the present: `ps` lists live applications' instances only, in a stable
order, with a short ID and a status that says when an instance waits out a restart delay;
`events -f` prints one header; `endpoints --watch` prints only real changes.

The allocation views are the server's (``elastin.server.views``, on an in-memory store); the
tables are the CLI's, against a scripted API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from cli_support import FakeApi
from click.testing import Result

from elastin.cli import render, views
from elastin.model.cluster import Allocation, Node
from elastin.model.codec import to_data
from elastin.model.resources import Resources
from elastin.server.cluster import Cluster
from elastin.server.reports import AllocReport
from elastin.server.views import AllocFilter
from elastin.store.memory import MemoryStore
from elastin.testing import FakeClock

Run = Callable[..., Result]

SPEC = """
app: {name}
services:
  web:
    command: python3 -m http.server
    resources: {{cpu: 100m, memory: 32Mi}}
    replicas: 2
"""


# ------------------------------------------------------------------------ the server's view
async def test_a_deleted_applications_instances_are_shown_only_with_all() -> None:
    cluster = await Cluster.open(MemoryStore(), seed=1, clock=FakeClock())
    await cluster.nodes.register(Node(id="n1", name="n1", capacity=Resources(4000, 8 << 30)))
    for name in ("gone", "kept"):
        await cluster.apps.apply(SPEC.format(name=name))
    await cluster.applier.schedule_once()
    allocs, _ = await cluster.views.all_allocations()
    gone = [a for a in allocs if a.app == "gone"]
    await cluster.reports.update(gone[0].id, AllocReport(status="running", pid=42))
    await cluster.reports.update(gone[0].id, AllocReport(status="failed", reason="exit 3"))
    await cluster.apps.delete("gone")
    await cluster.applier.schedule_once()  # the other one is being stopped: not terminal yet

    shown = await cluster.views.allocations(AllocFilter())
    assert {a.app for a in shown} == {"kept"} and len(shown) == 2
    assert await cluster.views.allocations(AllocFilter(app="gone")) == []
    everything = await cluster.views.allocations(AllocFilter(all=True))
    assert {a.id for a in everything} == {a.id for a in allocs}


def alloc(app: str, workload: str, index: int, created: float, id_: str = "") -> Allocation:
    return Allocation(
        id=id_ or f"{app}{workload}{index}{created}",
        app=app,
        workload=workload,
        index=index,
        created_at=created,
    )


def test_allocations_are_in_a_stable_order_newest_first_per_index() -> None:
    from elastin.server.views import in_order

    old, new = alloc("b", "web", 0, 1.0), alloc("b", "web", 0, 5.0)
    rows = [alloc("b", "web", 1, 3.0), old, alloc("b", "api", 0, 9.0), new, alloc("a", "z", 2, 0)]
    names = [(a.app, a.workload, a.index, a.created_at) for a in in_order(rows)]
    assert names == [
        ("a", "z", 2, 0),
        ("b", "api", 0, 9.0),
        ("b", "web", 0, 5.0),
        ("b", "web", 0, 1.0),
        ("b", "web", 1, 3.0),
    ]
    assert in_order(list(reversed(rows))) == in_order(rows)


# ------------------------------------------------------------------------------- the tables
def ctrl_c_after(api: FakeApi, path: str, answers: int) -> None:
    """Ctrl-C when ``path`` is asked for once more than ``answers`` times."""

    def count(request: httpx.Request) -> None:
        if len(api.sent("GET", path)) > answers:
            raise KeyboardInterrupt

    api.on_request = count


def view(status: str, reason: str = "", id_: str = "1a2b3c4d5e6f") -> dict[str, Any]:
    a = Allocation(id=id_, app="t", workload="web", index=0, status=status, reason=reason)  # type: ignore[arg-type]
    data: dict[str, Any] = to_data(a)
    data["name"] = a.name
    return data


def test_ps_shows_each_instances_short_id(api: FakeApi, run: Run) -> None:
    api.on("GET", "/v1/allocations", [view("running")])
    api.on("GET", "/v1/services", [services_row()])
    res = run("ps")
    assert res.exit_code == 0, res.output
    header, row = [line for line in res.stdout.splitlines() if "ID" in line or "t.web" in line]
    assert header.split()[:3] == ["INSTANCE", "┃", "ID"]
    assert row.split()[:3] == ["t.web[0]", "│", "1a2b3c4d"]


def services_row() -> dict[str, Any]:
    return {
        "app": "t",
        "name": "web",
        "type": "service",
        "kind": "task",
        "desired": 1,
        "stopped": False,
        "running": 1,
        "pending": 0,
        "complete": 0,
        "failed": 0,
        "completions": None,
        "priority": 50,
        "resources": {"cpu": 100, "memory": 32 << 20, "disk": 0},
        "version": 1,
        "user": "",
    }


@pytest.mark.parametrize(
    ("status", "reason", "shown"),
    [
        ("starting", "restarting in 4s: exited with code 1", "restarting"),
        ("starting", "retry 2 in 4s: exited with code 1", "retrying"),
        ("starting", "waiting for dependencies: db", "starting"),
        ("starting", "", "starting"),
        ("running", "restarting in 4s", "running"),
    ],
)
def test_a_restart_delay_is_shown_as_restarting_or_retrying(
    status: str, reason: str, shown: str
) -> None:
    text = render.status_text(status, None, reason)
    assert text.plain == shown
    assert text.style == render.STATUS_STYLE[status]


def test_events_follow_prints_one_header(
    api: FakeApi, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    def event(rev: int, subject: str) -> dict[str, Any]:
        return {"rev": rev, "time": 0.0, "type": "alloc.started", "subject": subject,
                "message": f"pid {rev}", "level": "info"}  # fmt: skip

    monkeypatch.setattr(views.time, "sleep", lambda _: None)
    api.on(
        "GET",
        "/v1/events",
        [event(1, "t.web[0] 1a2b3c4d")],
        [event(2, "t.web[1] 2b3c4d5e")],
        [],
        [event(3, "t.api[0] 3c4d5e6f")],
    )
    ctrl_c_after(api, "/v1/events", 4)
    res = run("events", "-f")
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert sum("SUBJECT" in line for line in lines) == 1
    rows = [line for line in lines if "alloc.started" in line]
    assert len(rows) == 3
    assert len({line.index("pid") for line in rows}) == 1  # the columns line up


def test_endpoints_watch_prints_only_real_changes(api: FakeApi, run: Run) -> None:
    def registry(index: int, *ready: bool) -> dict[str, Any]:
        endpoints = [
            {"id": f"a{i}-http", "allocation": f"a{i}", "instance": f"t.web[{i}]",
             "node": "n1", "address": "127.0.0.1", "port": 8000 + i, "ready": r,
             "weight": 100, "metadata": []}
            for i, r in enumerate(ready)
        ]  # fmt: skip
        port = {"name": "http", "protocol": "http", "cluster": "t.web.http", "endpoints": endpoints}
        return {"index": index, "services": [{"app": "t", "name": "web", "ports": [port]}]}

    api.on(
        "GET",
        "/v1/mesh/services",
        registry(4, True),
        registry(5, True),  # another service's change moved the mesh version
        registry(6, True),
        registry(7, True, False),  # a new endpoint
        registry(8, True, True),  # now ready
    )
    ctrl_c_after(api, "/v1/mesh/services", 5)
    res = run("endpoints", "--watch")
    assert res.exit_code == 0, res.output
    titles = [
        line.strip() for line in res.stdout.splitlines() if line.strip().startswith("version")
    ]
    assert titles == ["version 4", "version 7", "version 8"]
    sent = [r.url.params.get("index") for r in api.requests]
    assert sent == ["0", "4", "5", "6", "7", "8"]


def test_endpoints_watch_json_is_one_object_per_real_change(api: FakeApi, run: Run) -> None:
    empty = {"index": 1, "services": []}
    api.on(
        "GET",
        "/v1/mesh/services",
        empty,
        {**empty, "index": 2},
        {"index": 3, "services": [{"app": "t", "name": "w", "ports": []}]},
    )
    ctrl_c_after(api, "/v1/mesh/services", 3)
    res = run("endpoints", "--watch", "--json")
    assert res.exit_code == 0, res.output
    assert [line[:12] for line in res.stdout.splitlines()] == ['{"index": 1,', '{"index": 3,']
