"""The restart policy as a pure decision (``elastin.agent.restart.decide``)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from elastin.agent.restart import Finish, GiveUp, Restart, decide
from elastin.model.workload import RestartPolicy


def test_a_job_never_restarts_in_place() -> None:
    p = RestartPolicy(mode="always")
    assert decide(p, "job", restarts=0, started=0, ended=1, ok=True) == Finish("complete")
    assert decide(p, "job", restarts=0, started=0, ended=1, ok=False) == Finish("failed")


def test_modes() -> None:
    never, on_failure = RestartPolicy(mode="never"), RestartPolicy(mode="on-failure", backoff=1)
    assert decide(never, "service", restarts=0, started=0, ended=1, ok=False) == Finish("failed")
    assert decide(on_failure, "service", restarts=0, started=0, ended=1, ok=True) == Finish(
        "complete"
    )
    assert decide(on_failure, "service", restarts=0, started=0, ended=1, ok=False) == Restart(
        1.0, 1
    )
    always = RestartPolicy(mode="always", backoff=1)
    assert decide(always, "service", restarts=0, started=0, ended=1, ok=True) == Restart(1.0, 1)


def test_backoff_doubles_up_to_its_bound_and_attempts_are_counted() -> None:
    p = RestartPolicy(mode="always", attempts=4, backoff=1, max_backoff=3, reset_after=60)
    delays, restarts = [], 0
    while True:
        d = decide(p, "service", restarts=restarts, started=0, ended=1, ok=False)
        if not isinstance(d, Restart):
            break
        delays.append(d.delay)
        restarts = d.restarts
    assert delays == [1, 2, 3, 3]
    assert d == GiveUp(4)


def test_a_run_as_long_as_reset_after_starts_a_new_series() -> None:
    p = RestartPolicy(mode="always", attempts=2, backoff=1, reset_after=60)
    assert decide(p, "service", restarts=2, started=100, ended=159.9, ok=False) == GiveUp(2)
    assert decide(p, "service", restarts=2, started=100, ended=160, ok=False) == Restart(1.0, 1)


policies = st.builds(
    RestartPolicy,
    mode=st.sampled_from(["always", "on-failure", "never"]),
    attempts=st.integers(0, 5),
    backoff=st.floats(0.1, 10),
    max_backoff=st.floats(0.1, 100),
    reset_after=st.floats(0, 100),
)


@given(policies, st.integers(0, 10), st.floats(0, 1000), st.floats(0, 1000), st.booleans())
def test_decisions_keep_the_policy(
    p: RestartPolicy, restarts: int, started: float, length: float, ok: bool
) -> None:
    ended = started + length
    d = decide(p, "service", restarts=restarts, started=started, ended=ended, ok=ok)
    length = ended - started  # as the policy sees it (floating point)
    if isinstance(d, Restart):
        assert p.mode == "always" or not ok
        assert d.restarts == (1 if length >= p.reset_after else restarts + 1)
        assert not p.attempts or d.restarts <= p.attempts
        assert 0 < d.delay <= max(p.max_backoff, p.backoff)
    elif isinstance(d, GiveUp):
        assert p.attempts and d.restarts >= p.attempts and length < p.reset_after
    else:
        assert d.status == ("complete" if ok else "failed")
        assert p.mode == "never" or (p.mode == "on-failure" and ok)
