"""Round trips of the model through the JSON codec, and the allocation lifecycle table."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from elastin.model.cluster import (
    ALLOC_TRANSITIONS,
    Allocation,
    IllegalTransition,
    Node,
    Usage,
    check_transition,
)
from elastin.model.codec import from_data, to_data
from elastin.model.errors import ModelError
from elastin.model.resources import Resources
from elastin.model.workload import (
    Application,
    Constraint,
    HealthCheck,
    Port,
    RestartPolicy,
    Workload,
)


def test_workload_round_trip_through_json() -> None:
    w = Workload(
        name="web",
        command=("python3", "-m", "http.server"),
        env=(("A", "1"),),
        resources=Resources(500, 128 << 20, 0),
        health=HealthCheck(type="http", port="http", path="/healthz"),
        ports=(Port("http", 8080),),
        constraints=(Constraint("node.name", "in", ("a", "b")),),
        restart=RestartPolicy(mode="always", attempts=3),
    )
    app = Application("shop", (w,))
    assert from_data(Application, json.loads(json.dumps(to_data(app)))) == app


@given(
    st.builds(
        Allocation,
        id=st.text(min_size=1, max_size=8),
        app=st.text(max_size=8),
        workload=st.text(max_size=8),
        index=st.integers(0, 1000),
        exit_code=st.none() | st.integers(-255, 255),
        usage=st.builds(Usage, cpu=st.floats(0, 1e6), memory=st.integers(0, 1 << 40)),
        ports=st.lists(st.tuples(st.text(max_size=5), st.integers(0, 65535))).map(tuple),
    )
)
def test_allocation_round_trip(a: Allocation) -> None:
    assert from_data(Allocation, json.loads(json.dumps(to_data(a)))) == a


def test_decode_errors_are_model_errors() -> None:
    with pytest.raises(ModelError):
        from_data(Node, {"id": 3, "name": "x"})
    with pytest.raises(ModelError):
        from_data(
            Allocation, {"id": "x", "app": "a", "workload": "w", "index": 0, "status": "dancing"}
        )


def test_lifecycle_table() -> None:
    check_transition("pending", "running")
    check_transition("running", "starting")  # restart in place
    for terminal in ("complete", "failed", "stopped", "lost"):
        assert ALLOC_TRANSITIONS[terminal] == frozenset({terminal})
        with pytest.raises(IllegalTransition):
            check_transition(terminal, "running")


def test_resources_arithmetic_and_formulas() -> None:
    r = Resources.parse(cpu="500m", memory="128Mi", disk="1Gi")
    assert r == Resources(500, 128 << 20, 1 << 30)
    assert r * 3 == Resources(1500, 384 << 20, 3 << 30)
    assert (r + r - r) == r
    assert r.fits_in(Resources(500, 128 << 20, 1 << 30))
    assert r.shortfall(Resources(100, 1 << 30, 0)) == ["cpu", "disk"]
    w = Workload(name="x", resources=r, replicas=4)
    assert w.total() == r * 4
    job = Workload(name="j", type="job", resources=r, parallelism=3, replicas=9)
    assert job.instances == 3 and job.total() == r * 3
    assert RestartPolicy(backoff=1, max_backoff=5).delay(1) == 1
    assert RestartPolicy(backoff=1, max_backoff=5).delay(4) == 5
