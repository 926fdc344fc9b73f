"""``elastin exec`` when a name (or a short id) matches more than one running instance
(review of issue #11): during a rolling update the old and the new ``shop.api[0]`` both run.
The one running its service's current version is taken when exactly one does, and the CLI
says which; otherwise it refuses, listing short ids and versions. Pure ``candidates`` /
``choose``, and the command on a scripted API."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import httpx
import pytest
from cli_support import FakeApi
from click.testing import Result

from elastin.cli.exec import Unresolved, candidates, choose, current_versions, resolve
from elastin.model.cluster import Allocation
from elastin.model.codec import to_data

OLD = Allocation("0a" * 16, "shop", "api", 0, status="running", node_id="n1", spec_version=2)
NEW = Allocation("1b" * 16, "shop", "api", 0, status="running", node_id="n1", spec_version=3)
GONE = Allocation("2c" * 16, "shop", "api", 0, status="stopped", node_id="n1", spec_version=1)
# two allocations whose ids begin alike: one short id names both
TWIN_A = Allocation("abcdef01" + "1" * 24, "shop", "web", 0, status="running", spec_version=1)
TWIN_B = Allocation("abcdef01" + "2" * 24, "blog", "web", 0, status="running", spec_version=1)
ALL = [GONE, OLD, NEW, TWIN_A, TWIN_B]
CURRENT = {"shop/api": 3, "shop/web": 1, "blog/web": 1}


@pytest.mark.parametrize("ref", ["shop.api[0]", "api[0]", "api"])
def test_during_a_rolling_update_the_current_versions_instance_is_taken_and_named(
    ref: str,
) -> None:
    running = candidates(ref, ALL)
    assert sorted(a.id for a in running) == sorted([OLD.id, NEW.id])
    chosen, note = choose(ref, running, CURRENT)
    assert chosen == NEW
    assert f"running in shop.api[0] {NEW.short_id}, of the current version 3" in note
    assert f"not in {OLD.short_id} (version 2)" in note and "\n" not in note
    assert resolve(ref, ALL, CURRENT) == NEW


@pytest.mark.parametrize("current", [{}, {"shop/api": 7}])
def test_without_exactly_one_current_instance_it_refuses_listing_them(
    current: dict[str, int],
) -> None:
    with pytest.raises(Unresolved) as e:
        resolve("shop.api[0]", ALL, current)
    assert "names 2 running instances" in e.value.message
    assert f"shop.api[0] {OLD.short_id} (version 2)" in e.value.message
    assert f"shop.api[0] {NEW.short_id} (version 3)" in e.value.message
    assert "short id" in e.value.hint


def test_a_short_id_two_allocations_share_is_resolved_by_version_or_by_whole_ids() -> None:
    with pytest.raises(Unresolved) as e:  # both of their services' current versions
        resolve("abcdef01", ALL, CURRENT)
    assert TWIN_A.id in e.value.message and TWIN_B.id in e.value.message
    assert "by its id" in e.value.hint
    chosen, note = choose("abcdef01", candidates("abcdef01", ALL), {"shop/web": 1})
    assert chosen == TWIN_A and TWIN_B.id in note
    assert resolve(TWIN_B.id, ALL) == TWIN_B  # the whole id: one


def test_one_running_instance_needs_no_choice() -> None:
    assert choose("x", [NEW], {}) == (NEW, "")
    assert current_versions([{"app": "shop", "name": "api", "version": 3}, {"bad": 1}]) == {
        "shop/api": 3
    }


def test_exec_runs_in_the_current_instance_and_says_so_on_stderr(
    api: FakeApi, run: Callable[..., Result]
) -> None:
    api.on("GET", "/v1/allocations", [to_data(a) for a in ALL])
    api.on(
        "GET",
        "/v1/services",
        [
            {"app": "shop", "name": "api", "version": 3},
            {"app": "shop", "name": "web", "version": 1},
        ],
    )
    frames = [
        {"stream": "stdout", "data": base64.b64encode(b"hi\n").decode()},
        {"exit_code": 0, "signal": None, "timed_out": False},
    ]
    body = b"".join(json.dumps(f).encode() + b"\n" for f in frames)
    api.on("POST", f"/v1/allocations/{NEW.id}/exec", httpx.Response(200, content=body))
    res = run("exec", "shop.api[0]", "--", "echo", "hi")
    assert res.exit_code == 0, res.output
    assert res.stdout == "hi\n"
    (line,) = res.stderr.splitlines()
    assert line.startswith("elastin: 'shop.api[0]' names 2 running instances: running in")
    assert NEW.short_id in line and OLD.short_id in line
    assert not api.sent("POST", f"/v1/allocations/{OLD.id}/exec")


def test_exec_refuses_when_no_single_instance_is_current(
    api: FakeApi, run: Callable[..., Result]
) -> None:
    api.on("GET", "/v1/allocations", [to_data(a) for a in ALL])
    api.on("GET", "/v1/services", [{"app": "shop", "name": "api", "version": 9}])
    res = run("exec", "shop.api[0]", "--", "true")
    assert res.exit_code == 1
    assert OLD.short_id in res.stderr and NEW.short_id in res.stderr
    assert not [r for r in api.requests if r.method == "POST"]
