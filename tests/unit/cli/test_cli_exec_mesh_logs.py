"""``elastin exec``'s instance names (``resolve``) and ``logs --mesh SERVICE --tail N`` (the
last N requests of the service, across nodes in time order, named as the CLI names things),
on a scripted API."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest
from cli_support import URL, FakeApi
from click.testing import Result

from elastin.cli import common
from elastin.cli.exec import Unresolved, resolve
from elastin.cli.logs import merge_by_time, readable
from elastin.client.http import Client
from elastin.model.cluster import Allocation
from elastin.model.codec import to_data

A0 = Allocation("a0" * 8, "shop", "api", 0, status="running", node_id="n1")
A1 = Allocation("a1" * 8, "shop", "api", 1, status="running", node_id="n1")
W0 = Allocation("b0" * 8, "shop", "web", 0, status="running", node_id="n1")
OLD = Allocation("c0" * 8, "shop", "job", 0, status="failed", node_id="n1")
OTHER = Allocation("d0" * 8, "blog", "web", 0, status="running", node_id="n1")
ALL = [A0, A1, W0, OLD, OTHER]


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("shop.api[1]", A1),
        ("api[0]", A0),
        ("shop.web", W0),
        (A1.id, A1),
        (A1.short_id, A1),
    ],
)
def test_instances_are_named_as_ps_shows_them(ref: str, expected: Allocation) -> None:
    assert resolve(ref, ALL) == expected


@pytest.mark.parametrize(
    ("ref", "says"),
    [
        ("api", "'api' names 2 running instances: shop.api[0], shop.api[1]"),
        ("web[0]", "'web[0]' names 2 running instances: blog.web[0], shop.web[0]"),
        ("api[7]", "no instance 'api[7]'"),
        ("job", f"shop.job[0] {OLD.short_id} is failed, not running"),
        ("Not A Name!", "not an instance"),
    ],
)
def test_what_names_no_single_running_instance_is_told(ref: str, says: str) -> None:
    with pytest.raises(Unresolved) as e:
        resolve(ref, ALL)
    assert e.value.message.startswith(says), e.value.message


def entry(time: str, service: str, path: str, node: str = "") -> dict[str, object]:
    return {
        "time": time,
        "caller": "shop/web",
        "listener": f"l_{W0.id}.api",
        "service": service,
        "endpoint": f"e_{A0.id}-http",
        "path": path + node,
        "status": 200,
    }


def test_the_log_says_services_and_instances_as_the_cli_does() -> None:
    shown = readable(
        entry("01/May/2024:12:00:00.000", "c_shop.api.http", "/"),
        {
            A0.id: A0.name,
            W0.id: W0.name,
        },
    )
    assert shown["service"] == "shop/api" and shown["port"] == "http"
    assert shown["caller"] == "shop.web[0]" and shown["endpoint"] == "shop.api[0]"
    assert "listener" not in shown
    assert readable(entry("x", "c_shop.api.http", "/"), {})["endpoint"] == A0.short_id


def test_nodes_are_merged_by_time_oldest_first() -> None:
    n1 = [
        entry("01/May/2024:12:00:01.000", "s", "/1"),
        entry("01/May/2024:12:00:03.000", "s", "/3"),
    ]
    n2 = [
        entry("01/May/2024:12:00:02.000", "s", "/2"),
        entry("01/May/2024:12:00:04.500", "s", "/4"),
    ]
    assert [e["path"] for e in merge_by_time([n1, n2], 3)] == ["/2", "/3", "/4"]
    assert [e["path"] for e in merge_by_time([n1, n2], None)] == ["/1", "/2", "/3", "/4"]


def log_lines(api_times: list[str], n_noise: int, node: str) -> bytes:
    """A node's access log: a notice, requests to shop/api at ``api_times``, then
    ``n_noise`` requests to shop/noise."""
    lines = [
        json.dumps(entry(f"01/May/2024:12:00:{t}", "c_shop.api.http", f"/{node}-{i}"))
        for i, t in enumerate(api_times)
    ]
    noise = entry("01/May/2024:12:01:00.000", "c_shop.noise.http", "/n")
    lines += [json.dumps(noise)] * n_noise
    return "\n".join(["[NOTICE] haproxy started", *lines]).encode() + b"\n"


def test_mesh_tail_reads_back_until_it_has_n_requests_of_the_service(
    api: FakeApi, run: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    """It read the last 20×N lines and kept the service's: behind 500 other requests, none."""
    logs = {
        "n1": log_lines(["00.000", "01.000", "02.000", "03.000"], 500, "n1"),
        "n2": log_lines(["00.500", "01.500", "02.500"], 10, "n2"),
    }
    tails: dict[str, list[int]] = {"n1": [], "n2": []}

    def route(request: httpx.Request) -> httpx.Response:
        if not request.url.path.endswith("/mesh/logs"):
            return api(request)
        node, tail = request.url.path.split("/")[3], int(request.url.params["tail"])
        tails[node].append(tail)
        lines = logs[node].splitlines(keepends=True)
        return httpx.Response(200, content=b"".join(lines[-tail:] if tail else lines))

    api.on("GET", "/v1/nodes", [{"id": "n1", "name": "one"}, {"id": "n2", "name": "two"}])
    api.on("GET", "/v1/allocations", [to_data(a) for a in ALL])
    transport = httpx.MockTransport(route)
    monkeypatch.setattr(common, "connect", lambda: Client(URL, "tok", transport=transport))
    res = run("logs", "--mesh", "api", "--tail", "3")
    assert res.exit_code == 0, res.output
    shown = [json.loads(line) for line in res.output.splitlines()]
    assert [e["path"] for e in shown] == ["/n1-2", "/n2-2", "/n1-3"]  # by time, oldest first
    assert all(e["service"] == "shop/api" and e["endpoint"] == "shop.api[0]" for e in shown)
    assert all(e["caller"] == "shop.web[0]" for e in shown)
    assert tails == {"n1": [60, 600], "n2": [60]}  # read back only as far as needed
