"""The agent API's parameter checks (``agent/api.py``), pure: what may reach a path."""

from __future__ import annotations

import pytest

from elastin.agent.api import Refused, parse_alloc_id, parse_follow, parse_stream, parse_tail


@pytest.mark.parametrize("good", ["0", "ab12cd34ef56", "f" * 32])
def test_allocation_ids_the_server_makes_are_accepted(good: str) -> None:
    assert parse_alloc_id(good) == good


@pytest.mark.parametrize(
    "bad", ["", "..", "../token", "ab12/cd", "AB12", "f" * 33, "ab12\n", "ab 12", "%2e%2e"]
)
def test_anything_else_is_refused(bad: str) -> None:
    with pytest.raises(Refused) as e:
        parse_alloc_id(bad)
    assert e.value.status == 422


def test_stream_tail_and_follow() -> None:
    assert parse_stream({}) == "stdout"
    assert parse_stream({"stream": "stderr"}) == "stderr"
    assert parse_tail({}) == 100
    assert parse_tail({"tail": "0"}) is None  # the whole file
    assert parse_tail({"tail": "100000"}) == 100_000
    assert parse_follow({}) is False
    assert parse_follow({"follow": "True"}) is True
    for params in ({"tail": "100001"}, {"tail": "-5"}, {"tail": "٣"}, {"tail": " 5"}):
        with pytest.raises(Refused):
            parse_tail(params)
    with pytest.raises(Refused):
        parse_stream({"stream": "../x"})
    with pytest.raises(Refused):
        parse_follow({"follow": "2"})
