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
