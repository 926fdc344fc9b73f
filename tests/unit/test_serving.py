"""The serving limits' pure parts: settings from the environment (a bad value names its
variable) and the connection counts per address."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from elastin.serving import Guard, Limits


def test_limits_come_from_the_environment() -> None:
    limits = Limits.from_env(
        {"ELASTIN_API_HEADER_TIMEOUT": "0.5", "ELASTIN_API_MAX_BODY": "1024", "OTHER": "x"}
    )
    assert limits.header_timeout == 0.5
    assert limits.max_body == 1024
    assert limits.idle_timeout == Limits().idle_timeout
    assert Limits.from_env({}, max_body=7).max_body == 7


@pytest.mark.parametrize("value", ["0", "-1", "lots", "1.5"])
def test_a_bad_value_names_its_variable(value: str) -> None:
    with pytest.raises(ValueError, match="ELASTIN_API_MAX_PER_CLIENT"):
        Limits.from_env({"ELASTIN_API_MAX_PER_CLIENT": value})


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "x"])
def test_a_timeout_that_is_not_a_finite_positive_number_is_refused(value: str) -> None:
    """`nan` passed `value <= 0`: a NaN header timeout closed every connection at once (and
    disorders the loop's timers), `inf` meant no timeout at all."""
    with pytest.raises(ValueError, match="ELASTIN_API_HEADER_TIMEOUT"):
        Limits.from_env({"ELASTIN_API_HEADER_TIMEOUT": value})


def test_a_bad_setting_stops_the_command_with_its_name_not_a_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "ELASTIN_DATA_DIR": str(tmp_path), "ELASTIN_API_MAX_BODY": "4MB"}
    for args in (["server", "--port", "0"], ["daemon", "--port", "0"]):
        done = subprocess.run(
            [sys.executable, "-m", "elastin.cli.main", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        assert "ELASTIN_API_MAX_BODY='4MB'" in done.stderr and "Traceback" not in done.stderr


def test_default_caps_follow_the_file_limit() -> None:
    limits = Limits()
    assert 0 < limits.per_client < limits.total
    assert Limits(max_connections=10).per_client == 5


async def test_guard_counts_per_address_and_in_total() -> None:
    g = Guard(total=3, per_client=2)
    assert g.admit("a") and g.admit("a")
    assert not g.admit("a")  # over its share, still counted in the total until closed
    assert g.full()
    g.release("a", admitted=False)
    assert g.admit("b")
    g.release("a", admitted=True)
    assert g.by_client == {"a": 1, "b": 1} and g.open == 2


def test_a_push_on_a_uvicorn_without_what_it_reads_says_so_once_and_declines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """PUSH reads uvicorn's RequestResponseCycle; if a uvicorn release renames what it reads,
    every push declines (the stream sends the ASGI way) and one warning says why."""
    from elastin import serving

    class Cycle:  # a cycle of a uvicorn that has no `flow`
        disconnected = False
        response_started = True
        response_complete = False
        chunked_encoding = True

    serving._push_broken.clear()
    push = serving._pusher(Cycle())  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="elastin.serving"):
        assert push(b"x") is False
        assert push(b"y") is False
    assert caplog.text.count("streamed answers go the slower ASGI way") == 1


async def test_the_agents_listeners_answer_errors_through_one_helper(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The agent's API and its wake listener build their JSON errors with
    ``serving.json_error`` (issue #13: the wake listener had a copy of its own): the body is
    the APIs' one, and a change to the helper reaches both."""
    import httpx

    from elastin import serving
    from elastin.agent.api import Refused
    from elastin.agent.wake import WakeListener

    assert serving.error_body("Invalid", "bad") == {"error": "Invalid", "message": "bad"}
    assert serving.error_body("Invalid", "bad", "fix") == {
        "error": "Invalid",
        "message": "bad",
        "hint": "fix",
    }
    made: list[int] = []
    real = serving.json_error

    def spy(status: int, error: str, message: str, hint: str = "") -> object:
        made.append(status)
        return real(status, error, message, hint)

    monkeypatch.setattr(serving, "json_error", spy)
    wake = WakeListener(lambda cluster, held: False, Limits())
    transport = httpx.ASGITransport(app=wake.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://agent") as c:
        r = await c.post("/v1/mesh/wake/wrong")
        assert (r.status_code, r.json()) == (
            404,
            {"error": "NotFound", "message": "no such wake on this agent"},
        )
        r = await c.get(f"/v1/mesh/wake/{wake.key}")  # starlette's own refusal
        assert (r.status_code, r.json()) == (
            405,
            {"error": "HTTPError", "message": "Method Not Allowed"},
        )
    refused = Refused(422, "Invalid", "tail must be a number", "e.g. tail=100").response()
    assert refused.status_code == 422
    assert made == [404, 405, 422]
