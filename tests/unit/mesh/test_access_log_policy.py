"""``mesh.access_log``, ``mesh.slow`` and ``mesh.trace_sample``: parsed from the spec (errors
in the spec's style), carried into the mesh model, and rendered into HAProxy's rules."""

from __future__ import annotations

import pytest

from elastin.mesh.haproxy.render import Paths, render
from elastin.mesh.model import Cluster, Endpoint, Listener, MeshSnapshot, diff
from elastin.mesh.model.build import build_clusters
from elastin.mesh.model.types import MeshModelError
from elastin.model.errors import SpecError
from elastin.model.spec import parse_spec
from elastin.model.workload import MeshPolicy

W = "app: a\nservices:\n  w:\n    command: x\n    ports: {http: 0}\n"


def mesh(block: str) -> MeshPolicy:
    return parse_spec(W + f"    mesh: {block}\n", "t.yaml").workloads[0].mesh


def problems(block: str) -> list[tuple[str, int, str]]:
    with pytest.raises(SpecError) as e:
        mesh(block)
    return [(i.path, i.line, f"{i.message} | {i.hint}") for i in e.value.issues]


def test_the_defaults_log_abnormal_requests_and_a_sample() -> None:
    m = parse_spec(W, "t.yaml").workloads[0].mesh
    assert (m.access_log, m.access_log_sample, m.slow, m.trace_sample) == (True, 0.01, 1.0, 0.01)


@pytest.mark.parametrize(
    ("value", "on", "sample"),
    [
        ("all", True, 1.0),
        ("errors", True, 0.0),
        ("off", False, 0.0),
        ("true", True, 1.0),  # as before: every request
        ("false", False, 0.0),
        ("{sample: 0.05}", True, 0.05),
        ("{sample: 5%}", True, 0.05),
        ("{sample: 0}", True, 0.0),
        ("{sample: 1}", True, 1.0),
    ],
)
def test_access_log_settings(value: str, on: bool, sample: float) -> None:
    m = mesh(f"{{access_log: {value}}}")
    assert (m.access_log, m.access_log_sample) == (on, sample)


def test_slow_and_trace_sample() -> None:
    m = mesh("{slow: 250ms, trace_sample: 10%}")
    assert (m.slow, m.trace_sample) == (0.25, 0.1)
    assert mesh("{slow: 0, trace_sample: 1}").slow == 0.0


@pytest.mark.parametrize(
    ("block", "path", "words"),
    [
        ("{access_log: maybe}", "services.w.mesh.access_log", "true or false"),
        ("{access_log: erors}", "services.w.mesh.access_log", "did you mean 'errors'"),
        ("{access_log: [all]}", "services.w.mesh.access_log", "not a list"),
        ("{access_log: {sample: 2}}", "services.w.mesh.access_log.sample", "0.01 or 1%"),
        ("{access_log: {sample: .nan}}", "services.w.mesh.access_log.sample", "not a share"),
        ("{access_log: {sample: x%}}", "services.w.mesh.access_log.sample", "not a share"),
        ("{access_log: {smaple: 1}}", "services.w.mesh.access_log.smaple", "did you mean"),
        ("{access_log: {}}", "services.w.mesh.access_log", "needs sample"),
        ("{trace_sample: 101%}", "services.w.mesh.trace_sample", "not a share"),
        ("{trace_sample: true}", "services.w.mesh.trace_sample", "not a share"),
        ("{slow: fast}", "services.w.mesh.slow", "not a duration"),
        ("{slow: 2h}", "services.w.mesh.slow", "at most 3600s"),
    ],
)
def test_errors_are_located_and_explained(block: str, path: str, words: str) -> None:
    found = problems(block)
    assert [p for p, _, _ in found] == [path], found
    assert found[0][1] == 6  # the mesh line
    assert words in found[0][2], found


def test_the_policy_reaches_the_cluster() -> None:
    app = parse_spec(W + "    mesh: {access_log: errors, slow: 2s, trace_sample: 0.5}\n", "t.yaml")
    (c,) = build_clusters({"a": app}, [], {})
    assert (c.access_log, c.access_log_sample, c.slow, c.trace_sample) == (True, 0.0, 2.0, 0.5)


def test_the_model_refuses_shares_outside_0_to_1() -> None:
    for bad in ({"access_log_sample": 1.5}, {"trace_sample": -0.1}, {"slow": -1.0}):
        with pytest.raises(MeshModelError):
            Cluster("a.w.http", **bad)  # type: ignore[arg-type]


def frontend(protocol: str = "http", **policy: object) -> str:
    c = Cluster(
        "a.w.http", protocol=protocol, endpoints=(Endpoint("e1", "127.0.0.1", 8001),), **policy
    )  # type: ignore[arg-type]
    lst = Listener("c.w", 20001, "a.w.http", protocol=protocol)  # type: ignore[arg-type]
    text = render(MeshSnapshot(1, "n1", (lst,), (c,)), Paths("/tmp/x.sock"))
    return text.split("frontend l_c.w\n", 1)[1].split("\n\n", 1)[0]


def test_the_default_render_silences_normal_responses_outside_the_sample() -> None:
    f = frontend()
    assert "log-format" in f and "dontlog-normal" not in f
    assert (
        '    http-response set-var-fmt(txn.elastin_log) "%rc/%Tr" '
        "if { rand(1000000) ge 10000 } { status lt 500 } !{ status 429 }"
    ) in f
    assert (
        "    http-response set-log-level silent if { var(txn.elastin_log),field(1,/) -m int 0 }"
        " { var(txn.elastin_log),field(2,/) -m int lt 1000 }"
    ) in f
    # a trace for 1% of the requests without a valid traceparent; an invalid one is removed
    assert "set-var(txn.elastin_trace) uuid,regsub(-,,g) if { rand(1000000) lt 10000 } !" in f
    assert "http-request del-header traceparent if { req.hdr(traceparent) -m found } !" in f
    assert "unique-id-format" not in f  # HAProxy would make one for every logged request


def test_all_errors_and_off_render() -> None:
    everything = frontend(access_log_sample=1.0, trace_sample=1.0)
    assert "log-format" in everything and "set-log-level" not in everything
    assert "rand(" not in everything and "del-header traceparent" not in everything
    errors = frontend(access_log_sample=0.0, slow=0.0, trace_sample=0.0)
    assert (
        '    http-response set-var-fmt(txn.elastin_log) "%rc" if { status lt 500 } !{ status 429 }'
    ) in errors
    assert "set-log-level silent if { var(txn.elastin_log) -m int 0 }\n" in errors + "\n"
    assert "elastin_trace" not in errors  # no trace is ever started
    off = frontend(access_log=False)
    assert "    no log" in off and "capture" not in off and "set-log-level" not in off


def test_tcp_logs_abnormal_connections_unless_all() -> None:
    assert "    option dontlog-normal" in frontend("tcp")
    assert "dontlog-normal" not in frontend("tcp", access_log_sample=1.0)
    assert "dontlog-normal" not in frontend("tcp", access_log=False)


def test_a_changed_log_or_trace_policy_reloads() -> None:
    def snap(**policy: object) -> MeshSnapshot:
        c = Cluster("a.w.http", **policy)  # type: ignore[arg-type]
        return MeshSnapshot(1, "n1", (Listener("c.w", 20001, "a.w.http"),), (c,))

    for change in ({"access_log_sample": 1.0}, {"slow": 2.0}, {"trace_sample": 0.5}):
        assert diff(snap(), snap(**change)).reload, change


def test_the_log_line_stays_json_after_a_redispatch() -> None:
    # HAProxy writes %rc as "+1" after a redispatch: a JSON string, never a bare number
    f = frontend()
    assert '"retries":"%rc"' in f
    assert '"retries":"%rc"' in frontend("tcp")
