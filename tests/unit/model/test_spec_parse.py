"""Spec files: the full format parses as documented; every mistake is located and explained."""

from __future__ import annotations

import contextlib
import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from elastin.model.errors import SpecError, SpecIssue
from elastin.model.resources import Resources
from elastin.model.spec import load_spec, parse_duration, parse_spec
from elastin.model.workload import Constraint, Fault, HealthCheck, Port, RestartPolicy

ROOT = Path(__file__).resolve().parents[3]

FULL = """\
app: shop
services:
  web:
    command: python3 -m http.server
    args: ["--bind", "127.0.0.1"]
    env: {B: 2, A: hello}
    workdir: ./web
    resources: {cpu: 500m, memory: 128Mi, disk: 1Gi, pids: 256}
    replicas: 2
    priority: 70
    restart: {policy: on-failure, attempts: 5, backoff: 500ms, max_backoff: 1m30s}
    health: {http: /healthz, interval: 5s, timeout: 1s, healthy_threshold: 2}
    ports: {http: 8080}
    depends_on: [db]
    constraints:
      - {attribute: node.name, op: in, value: [n1, n2]}
    stop_grace: 3s
  db:
    command: [postgres, -D, /data]
    resources: {cpu: 2, memory: 1024}
    ports: {pg: {port: 5432, protocol: tcp}, admin: null}
    health: {tcp: pg}
jobs:
  report:
    command: python3 report.py
    parallelism: 2
    completions: 4
    retries: 1
"""


def issues(text: str) -> list[SpecIssue]:
    with pytest.raises(SpecError) as err:
        parse_spec(text, file="t.yaml", base_dir="/base")
    return err.value.issues


def one(text: str) -> SpecIssue:
    found = issues(text)
    assert len(found) == 1, [i.render() for i in found]
    return found[0]


def test_full_format() -> None:
    app = parse_spec(FULL, file="t.yaml", base_dir="/base")
    assert app.name == "shop"
    web, db, report = app.workloads
    assert web.command == ("python3", "-m", "http.server", "--bind", "127.0.0.1")
    assert web.env == (("A", "hello"), ("B", "2"))
    assert web.workdir == "/base/web"
    assert web.resources == Resources(500, 128 << 20, 1 << 30) and web.pids == 256
    assert (web.replicas, web.priority, web.stop_grace) == (2, 70, 3.0)
    assert web.restart == RestartPolicy("on-failure", 5, 0.5, 90.0)
    assert web.health == HealthCheck(
        type="http", port="http", path="/healthz", interval=5.0, timeout=1.0, healthy_threshold=2
    )
    assert web.ports == (Port("http", 8080, "http"),)
    assert web.depends_on == ("db",)
    assert web.constraints == (Constraint("node.name", "in", ("n1", "n2")),)
    assert db.resources == Resources(2000, 1024 << 20, 0)
    assert db.ports == (Port("pg", 5432, "tcp"), Port("admin", 0, "http"))
    assert db.health is not None and db.health.type == "tcp" and db.health.port == "pg"

    assert db.restart.mode == "always"
    assert report.type == "job" and report.restart.mode == "on-failure"
    assert (report.parallelism, report.completions, report.retries) == (2, 4, 1)
    assert report.resources == Resources(100, 64 << 20, 0)  # defaults
    assert report.instances == 2 and web.instances == 2


def test_the_example_application_is_valid() -> None:
    app = load_spec(ROOT / "examples" / "shop.yaml")
    assert {w.name for w in app.workloads} == {
        "catalog",
        "inventory",
        "frontend",
        "loadgen",
        "report",
    }
    assert all(Path(w.workdir).is_dir() for w in app.workloads)


def test_durations() -> None:
    assert parse_duration(5) == 5.0
    assert parse_duration("500ms") == 0.5
    assert parse_duration("1m30s") == 90.0
    assert parse_duration("1h") == 3600.0
    for bad in ("5 s", "ten", "", "5x", -1, True):
        with pytest.raises(ValueError):
            parse_duration(bad)


W = "app: a\nservices:\n  w:\n    command: x\n"


@pytest.mark.parametrize(
    ("text", "path", "line", "words"),
    [
        (
            "app: a\nservices:\n  w:\n    command: x\n    replicaz: 2\n",
            "services.w.replicaz",
            5,
            "did you mean 'replicas'",
        ),
        (
            W + "    resources: {cpu: 1, memroy: 1Gi}\n",
            "services.w.resources.memroy",
            5,
            "did you mean 'memory'",
        ),
        (W + "    replicas: two\n", "services.w.replicas", 5, "whole number"),
        (W + "    resources: {cpu: 0, memory: 64Mi}\n", "services.w.resources.cpu", 5, "zero"),
        (W + "    resources: {cpu: -1, memory: 64Mi}\n", "services.w.resources.cpu", 5, "negative"),
        (W + "    resources: {cpu: 2000, memory: 64Mi}\n", "services.w.resources.cpu", 5, "1024"),
        (W + "    resources: {cpu: 1x, memory: 64Mi}\n", "services.w.resources.cpu", 5, "500m"),
        (W + "    resources: {cpu: 1, memory: 0}\n", "services.w.resources.memory", 5, "zero"),
        (W + "    resources: {cpu: 1, memory: 1Mi}\n", "services.w.resources.memory", 5, "4Mi"),
        (W + "    resources: {cpu: 1, memory: 65Ti}\n", "services.w.resources.memory", 5, "64Ti"),
        (
            W + "    resources: {cpu: 1, memory: 3Qb}\n",
            "services.w.resources.memory",
            5,
            "unknown unit",
        ),
        (
            W + "    resources: {cpu: 1, memory: 64Mi, pids: 2}\n",
            "services.w.resources.pids",
            5,
            "8",
        ),
        (W + "    resources: {cpu: 1}\n", "services.w.resources.memory", 5, "need memory"),
        (W + "    priority: 101\n", "services.w.priority", 5, "100"),
        (W + "    replicas: 1001\n", "services.w.replicas", 5, "1000"),
        (
            W + "    health: {port: http}\n    ports: {http: 80}\n",
            "services.w.health",
            5,
            "exactly one of",
        ),
        (
            W + "    health: {http: /, tcp: http}\n    ports: {http: 80}\n",
            "services.w.health",
            5,
            "found http, tcp",
        ),
        (
            W + "    health: {http: /, port: htp}\n    ports: {http: 80}\n",
            "services.w.health.port",
            5,
            "did you mean 'http'",
        ),
        (W + "    health: {http: /}\n", "services.w.health.port", 5, "declares none"),
        (
            W + "    health: {grpc: api}\n    ports: {rpc: {port: 0, protocol: grpc}}\n",
            "services.w.health.port",
            5,
            "no port named 'api'",
        ),
        (
            W + "    health: {tcp: http, service: x}\n    ports: {http: 80}\n",
            "services.w.health.service",
            5,
            "belongs to a grpc health check",
        ),
        (W + "    depends_on: [w]\n", "services.w.depends_on[0]", 5, "itself"),
        (W + "    depends_on: [ww]\n", "services.w.depends_on[0]", 5, "did you mean 'w'"),
        (W + "    ports: {a: 80, b: 80}\n", "services.w.ports.b", 5, "already used"),
        (W + "    ports: {a: 70000}\n", "services.w.ports.a", 5, "65535"),
        (W + "    kind: container\n", "services.w.image", 4, "needs an image"),
        (W + "    kind: pod\n", "services.w.kind", 5, "task, container, vm"),
        ("app: a\nservices:\n  w:\n    replicas: 1\n", "services.w.command", 4, "needs a command"),
        (W + "    stop_grace: soon\n", "services.w.stop_grace", 5, "duration"),
        (W + "    env: {1BAD: x}\n", "services.w.env.1BAD", 5, "variable name"),
        (W + "    restart: sometimes\n", "services.w.restart", 5, "always, on-failure, never"),
        (
            "app: a\njobs:\n  j:\n    command: x\n    parallelism: 3\n    completions: 2\n",
            "jobs.j.parallelism",
            5,
            "at most completions",
        ),
        ("app: a\nservices:\n  W_1:\n    command: x\n", "services.W_1", 3, "lower-case"),
        ("app: Shop\nservices:\n  w:\n    command: x\n", "app", 1, "valid application name"),
        ("services:\n  w:\n    command: x\n", "app", 1, "application name"),
        ("app: a\n", "services", 1, "no services and no jobs"),
        (W + "    upstreams: [db]\n", "services.w.upstreams[0]", 5, "no service named 'db'"),
        (W + "    upstreams: [w]\n", "services.w.upstreams[0]", 5, "its own upstream"),
        (W + "    mesh: {lb: fastest}\n", "services.w.mesh.lb", 5, "least_request"),
        (W + "    mesh: {fault: {}}\n", "services.w.mesh.fault", 5, "needs abort or delay"),
        (W + "    mesh: {access_log: maybe}\n", "services.w.mesh.access_log", 5, "true or false"),
        (W + "    mesh: {fault: {abort: 99}}\n", "services.w.mesh.fault.abort", 5, "HTTP"),
        (
            W + "    mesh: {fault: {delay: 1s, abort_percent: 5}}\n",
            "services.w.mesh.fault.abort_percent",
            5,
            "without abort",
        ),
        (
            W + "    mesh: {fault: {delay: 1s, delay_percent: 101}}\n",
            "services.w.mesh.fault.delay_percent",
            5,
            "percentage",
        ),
        (W + "    mesh: {lb: hash_header}\n", "services.w.mesh.hash_key", 5, "needs hash_key"),
        (
            W + '    mesh: {lb: hash_header, hash_key: "x) \\n  server evil"}\n',
            "services.w.mesh.hash_key",
            5,
            "not a header or cookie name",
        ),
        (
            W + "    mesh: {retry_on: [sometimes]}\n",
            "services.w.mesh.retry_on",
            5,
            "unknown retry condition",
        ),
        (W + "    mesh: {retries: 11}\n", "services.w.mesh.retries", 5, "10"),
        ("- 1\n", "", 1, "must be a mapping"),
        ("app: a\nservices: [\n", "", 3, "not valid YAML"),
    ],
)
def test_errors_are_located_and_explained(text: str, path: str, line: int, words: str) -> None:
    found = [i for i in issues(text) if i.path == path]
    assert len(found) == 1, [i.render() for i in issues(text)]
    issue = found[0]
    assert issue.file == "t.yaml"
    assert issue.path == path, issue.render()
    assert issue.line == line, issue.render()
    assert words in issue.message + " " + issue.hint, issue.render()


def test_every_problem_is_reported_in_file_order() -> None:
    text = textwrap.dedent(
        """\
        app: a
        services:
          w:
            command: x
            replicaz: 2
            priority: 900
          a:
            command: x
            depends_on: [b]
          b:
            command: x
            depends_on: [a]
        jobs:
          w:
            command: y
        """
    )
    found = issues(text)
    lines = [i.line for i in found]
    assert lines == sorted(lines)
    text_all = "\n".join(i.render() for i in found)
    for words in ("replicaz", "priority", "cycle: a -> b -> a", "already the name of a service"):
        assert words in text_all, text_all
    rendered = SpecError(found).render()
    assert rendered.startswith(f"spec is not valid ({len(found)} problems):")
    assert "t.yaml:5:5: services.w.replicaz: unknown key" in rendered and "hint:" in rendered


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "missing.yaml")


SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.floats(), st.text(max_size=8)
)
TREES = st.recursive(
    SCALARS,
    lambda kids: st.one_of(
        st.lists(kids, max_size=4),
        st.dictionaries(
            st.sampled_from(
                [
                    "app",
                    "services",
                    "jobs",
                    "command",
                    "resources",
                    "cpu",
                    "memory",
                    "w",
                    "health",
                    "http",
                    "ports",
                    "replicas",
                    "env",
                    "depends_on",
                    "restart",
                    "x",
                ]
            ),
            kids,
            max_size=5,
        ),
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(tree=TREES)
def test_any_structure_gives_an_application_or_a_spec_error(tree: object) -> None:
    try:
        text = yaml.safe_dump(tree)
    except yaml.YAMLError:
        return
    try:
        parse_spec(text, file="f.yaml")
    except SpecError as e:
        assert e.issues and all(isinstance(i.message, str) and i.message for i in e.issues)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_any_text_gives_an_application_or_a_spec_error(text: str) -> None:
    with contextlib.suppress(SpecError):
        parse_spec(text, file="f.yaml")


def test_grpc_health_check() -> None:
    app = parse_spec(
        "app: a\nservices:\n  api:\n    command: x\n"
        "    ports: {rpc: {port: 0, protocol: grpc}}\n"
        "    health: {grpc: rpc, service: shop.Catalog, interval: 2s}\n"
    )
    w = app.workload("api")
    assert w is not None and w.health == HealthCheck(
        type="grpc", port="rpc", service="shop.Catalog", interval=2.0
    )


def test_mesh_fault_injection() -> None:
    app = parse_spec(
        "app: a\nservices:\n  api:\n    command: x\n    ports: {http: 0}\n"
        "    mesh: {fault: {delay: 200ms, delay_percent: 25, abort: 503}}\n"
    )
    w = app.workload("api")
    assert w is not None and w.mesh.fault == Fault(
        abort_status=503, abort_percent=100, delay=0.2, delay_percent=25
    )


def _issues(text: str) -> list[str]:
    from elastin.model.errors import SpecError
    from elastin.model.spec import parse_spec

    try:
        parse_spec(text)
    except SpecError as e:
        return [f"{i.path}: {i.message}" for i in e.issues]
    return []


BASE = "app: a\nservices:\n  api:\n    command: x\n    ports: {http: 8080}\n"


def test_durations_and_quantities_that_are_no_numbers_are_refused() -> None:
    """``.nan`` passed every range check and took the node down at render time."""
    for extra, where in (
        ("    stop_grace: .nan\n", "services.api.stop_grace"),
        ("    mesh: {request_timeout: .nan}\n", "services.api.mesh.request_timeout"),
        ("    mesh: {request_timeout: .inf}\n", "services.api.mesh.request_timeout"),
        ("    health: {http: /h, interval: .nan}\n", "services.api.health.interval"),
        ("    resources: {cpu: .nan, memory: 64Mi}\n", "services.api.resources.cpu"),
        ("    resources: {cpu: 1, memory: 1.0e+308}\n", "services.api.resources.memory"),
        (
            "    resources: {cpu: '99999999999999999999999', memory: 1Mi}\n",
            "services.api.resources.cpu",
        ),
    ):
        found = _issues(BASE + extra)
        assert any(i.startswith(where) for i in found), (extra, found)


def test_an_upstream_or_dependency_named_twice_is_refused() -> None:
    spec = BASE + "  web:\n    command: x\n    upstreams: [api, api]\n    depends_on: [api, api]\n"
    found = _issues(spec)
    assert "services.web.upstreams[1]: 'api' is named twice" in found
    assert "services.web.depends_on[1]: 'api' is named twice" in found


def test_a_health_path_cannot_carry_headers() -> None:
    found = _issues(BASE + '    health: {http: "/h\\r\\nX-Evil: 1"}\n')
    assert any(i.startswith("services.api.health.http") for i in found), found
    assert _issues(BASE + "    health: {http: '/h?x=1%20y'}\n") == []


def test_a_nul_byte_never_reaches_a_command_or_an_environment() -> None:
    """It failed only at start ("embedded null byte") and leaked the instance's cgroups."""
    for extra, where in (
        ('    env: {A: "x\\0y"}\n', "services.api.env.A"),
        ('    workdir: "/tmp\\0x"\n', "services.api.workdir"),
    ):
        found = _issues(BASE + extra)
        assert any(i.startswith(where) and "NUL" in i for i in found), found
    found = _issues('app: a\nservices:\n  api:\n    command: ["sh", "-c\\0"]\n')
    assert any(i.startswith("services.api.command") and "NUL" in i for i in found), found


@pytest.mark.parametrize(
    ("given", "stored"),
    [("alice", "alice"), ("'1000'", "1000"), ("'1000:100'", "1000:100"), ("root", "root"),
     ("0", "root"), ("'000'", "root")],
)  # fmt: skip
def test_user(given: str, stored: str) -> None:
    app = parse_spec(f"app: a\nservices:\n  s:\n    command: x\n    user: {given}\n")
    assert app.workloads[0].user == stored


@pytest.mark.parametrize(
    ("given", "words"),
    [
        ("Bad Name", "is not a user"),
        ("'1:2:3'", "is not a user"),
        ("'99999999999'", "is not a user"),
        ("'1879048200'", "belongs to Elastin's dynamic users"),  # it would share one's files
        ("[a]", "must be a string"),
    ],
)
def test_a_user_that_is_not_one_is_refused(given: str, words: str) -> None:
    issue = one(f"app: a\nservices:\n  s:\n    command: x\n    user: {given}\n")
    assert issue.path == "services.s.user" and words in issue.message
