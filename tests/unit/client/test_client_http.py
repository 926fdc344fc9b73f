"""``Client`` against ``httpx.MockTransport``: what it sends, and how errors become
``ApiError`` / ``ServerUnavailable`` with a message and a hint."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from elastin.client.discovery import find_server, running_server
from elastin.client.errors import ApiError, ServerUnavailable
from elastin.client.http import AsyncClient, Client
from elastin.model.cluster import Allocation
from elastin.model.codec import to_data

URL = "http://elastin.test:4850"


def client(handler: Callable[[httpx.Request], httpx.Response]) -> Client:
    return Client(URL + "/", "s3cret", transport=httpx.MockTransport(handler))


def test_calls_carry_the_token_and_return_the_json() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"revision": 4})

    with client(handler) as c:
        assert c.url == URL
        assert c.status() == {"revision": 4}
    assert str(seen[0].url) == URL + "/v1/status"
    assert seen[0].headers["authorization"] == "Bearer s3cret"


def test_settlement_is_a_blocking_query_with_index_and_wait() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"state": "settling", "index": 12})

    with client(handler) as c:
        assert c.settlement("shop", index=11, wait=2.5) == {"state": "settling", "index": 12}
        c.settlement("shop", generation=7)
    assert seen[0].url.path == "/v1/apps/shop/settlement"
    assert dict(seen[0].url.params) == {"index": "11", "wait": "2.5", "generation": "0"}
    assert seen[0].extensions["timeout"]["read"] == 32.5  # longer than the server blocks
    assert dict(seen[1].url.params) == {"index": "0", "wait": "0.0", "generation": "7"}


def test_an_error_body_becomes_an_api_error_with_message_hint_and_issues() -> None:
    body = {"message": "no service named 'x'", "hint": "see `elastin ps`", "issues": [{"a": 1}]}
    with client(lambda _: httpx.Response(404, json=body)) as c, pytest.raises(ApiError) as err:
        c.service("x")
    e = err.value
    assert (e.status, e.message, e.hint, e.issues) == (
        404,
        body["message"],
        body["hint"],
        [{"a": 1}],
    )
    assert e.render() == "no service named 'x'\n  hint: see `elastin ps`"


def test_a_validation_error_of_the_framework_is_an_api_error() -> None:
    body = {"detail": [{"loc": ["query", "wait"], "msg": "too large"}]}
    with client(lambda _: httpx.Response(422, json=body)) as c, pytest.raises(ApiError) as err:
        c.settlement("shop", wait=1000)
    assert err.value.status == 422
    assert err.value.message.startswith("the server rejected the request: ")
    assert "too large" in err.value.message


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (httpx.Response(502, text="bad gateway from a proxy"), "bad gateway from a proxy"),
        (httpx.Response(500), "Internal Server Error"),
        (httpx.Response(400, json=["not", "a", "dict"]), "['not', 'a', 'dict']"),
    ],
)
def test_error_bodies_that_are_not_ours_keep_their_text(
    response: httpx.Response, message: str
) -> None:
    with client(lambda _: response) as c, pytest.raises(ApiError) as err:
        c.nodes()
    assert (err.value.status, err.value.message, err.value.hint) == (
        response.status_code,
        message,
        "",
    )


def refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("Connection refused", request=request)


def test_a_connection_failure_is_server_unavailable_with_a_hint() -> None:
    with client(refuse) as c, pytest.raises(ServerUnavailable) as err:
        c.apps()
    assert err.value.message == f"cannot reach the Elastin server at {URL}: Connection refused"
    assert "`elastin up FILE` starts one" in err.value.hint


def test_streams_translate_errors_too() -> None:
    with client(refuse) as c, pytest.raises(ServerUnavailable):
        list(c.logs("a1"))
    gone = httpx.Response(404, json={"message": "no allocation 'a1'", "hint": "see ps"})
    with client(lambda _: gone) as c, pytest.raises(ApiError) as err:
        list(c.logs("a1", stream="stderr", tail=5, follow=True))
    assert (err.value.status, err.value.message, err.value.hint) == (
        404,
        "no allocation 'a1'",
        "see ps",
    )


def test_logs_stream_the_bytes() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=b"one\ntwo\n")

    with client(handler) as c:
        assert b"".join(c.logs("a1", tail=3)) == b"one\ntwo\n"
    assert seen[0].url.path == "/v1/allocations/a1/logs"
    assert dict(seen[0].url.params) == {"stream": "stdout", "tail": "3", "follow": "false"}


def test_allocations_are_typed_and_filtered_by_query() -> None:
    a = Allocation(id="a1", app="shop", workload="web", index=0, status="running")
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=[to_data(a)])

    with client(handler) as c:
        assert c.allocations(app="shop", all=True) == [a]
    assert dict(seen[0].url.params) == {"all": "true", "app": "shop"}


def test_apply_sends_the_spec_and_where_it_came_from() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"app": "t", "changes": []})

    with client(handler) as c:
        c.apply("app: t\n", file="t.yaml", base_dir="/srv", dry_run=True)
    assert (seen[0].method, seen[0].url.path) == ("POST", "/v1/apps")
    assert json.loads(seen[0].content) == {
        "spec": "app: t\n",
        "file": "t.yaml",
        "base_dir": "/srv",
        "dry_run": True,
    }


def test_find_server_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ELASTIN_ADDR", URL)
    monkeypatch.setenv("ELASTIN_TOKEN", "t0k")
    assert find_server(tmp_path) == (URL, "t0k")


def test_find_server_from_the_data_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import os

    monkeypatch.delenv("ELASTIN_ADDR", raising=False)
    monkeypatch.delenv("ELASTIN_TOKEN", raising=False)
    with pytest.raises(ServerUnavailable) as err:
        find_server(tmp_path)
    assert "no Elastin server is running" in err.value.message and err.value.hint
    (tmp_path / "server.json").write_text(json.dumps({"url": URL, "pid": os.getpid()}))
    assert running_server(tmp_path) == (URL, os.getpid())
    with pytest.raises(ServerUnavailable) as err:
        find_server(tmp_path)
    assert err.value.message == f"no API token found in {tmp_path / 'token'}"
    (tmp_path / "token").write_text("t0k\n")
    assert find_server(tmp_path) == (URL, "t0k")


def test_a_killed_server_not_yet_reaped_is_not_running(tmp_path: Path) -> None:
    """After `kill -9` the process may linger as a zombie; it answers nothing, so `up` must
    start a new server instead of failing with "connection refused"."""
    import json
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "server.json").write_text(
            json.dumps({"url": "http://127.0.0.1:1", "pid": proc.pid})
        )
        assert running_server(tmp_path) == ("http://127.0.0.1:1", proc.pid)
        proc.send_signal(signal.SIGKILL)
        for _ in range(500):  # until the kernel has made it a zombie (we do not reap it)
            if Path(f"/proc/{proc.pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z":
                break
            time.sleep(0.01)
        assert running_server(tmp_path) is None
    finally:
        proc.kill()
        proc.wait()


async def test_an_allocation_the_agent_cannot_read_is_skipped_not_fatal_to_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One undecodable allocation made the agent's whole watch fail, every 30 s, for ever:
    nothing on the node started or stopped any more."""
    good = to_data(Allocation(id="good", app="a", workload="w", index=0))
    bad = {**good, "id": "bad", "index": "zero"}

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"allocations": [bad, good], "index": 7})

    c = AsyncClient(URL, "s3cret", transport=httpx.MockTransport(handler))
    allocs, index = await c.node_allocations("n1", 0, 0.0)
    await c.close()
    assert [a.id for a in allocs] == ["good"] and index == 7
    assert "allocation bad from the server cannot be read" in caplog.text
