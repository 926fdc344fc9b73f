"""A service's ``autoscale:`` block: parsed into the model's ``Autoscale`` with HPA's defaults
(Elastin's own for the evaluation interval and the scale-down window), kept through the
store's codec, and every mistake located and explained like the rest of the spec."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from elastin.model.codec import from_data, to_data
from elastin.model.errors import SpecError, SpecIssue
from elastin.model.rollout import fingerprint
from elastin.model.spec import parse_spec
from elastin.model.workload import (
    SCALE_DOWN_DEFAULT,
    SCALE_UP_DEFAULT,
    Application,
    Autoscale,
    Behavior,
    MetricTarget,
    Port,
    ScalingPolicy,
    ScalingRules,
    Vertical,
    Workload,
)

ROOT = Path(__file__).resolve().parents[3]
HTTP = "app: a\nservices:\n  web:\n    command: x\n    ports: {http: 8080, metrics: 9100}\n"
TCP = "app: a\nservices:\n  db:\n    command: x\n    ports: {pg: {port: 5432, protocol: tcp}}\n"


def web(block: str, head: str = HTTP) -> Workload:
    return parse_spec(head + f"    autoscale: {block}\n", file="t.yaml").workloads[0]


def issues(text: str) -> list[SpecIssue]:
    with pytest.raises(SpecError) as err:
        parse_spec(text, file="t.yaml")
    return err.value.issues


def one(block: str, head: str = HTTP) -> SpecIssue:
    found = issues(head + f"    autoscale: {block}\n")
    assert len(found) == 1, [i.render() for i in found]
    return found[0]


def test_without_autoscale_nothing_changes() -> None:
    w = parse_spec(HTTP, file="t.yaml").workloads[0]
    assert w.autoscale is None and w.replicas == 1


def test_defaults_are_hpas_but_the_interval_and_the_scale_down_window() -> None:
    w = web("{max: 10}")
    assert w.autoscale == Autoscale(min=1, max=10, metrics=(MetricTarget("cpu", 0.8),))
    a = w.autoscale
    assert a.tolerance == 0.1 and a.interval == 1.0 and a.idle_after == 300.0
    assert a.behavior.scale_up == ScalingRules(
        0.0, "max", (ScalingPolicy("pods", 4, 15.0), ScalingPolicy("percent", 100, 15.0))
    )
    assert a.behavior.scale_down == ScalingRules(
        60.0, "max", (ScalingPolicy("percent", 100, 15.0),)
    )
    assert w.replicas == 1  # max(min, 1) when replicas is left out


def test_every_field() -> None:
    w = web(
        "{min: 2, max: 20, tolerance: 5%, interval: 15s, startup_grace: 1m, idle_after: 30s,"
        " metrics: [{cpu: 70%}, {memory: 80%}, {rps: 100}, {inflight: 8.5}, {p99: 250ms},"
        " {metric: queue_depth, target: 10, port: metrics, path: /stats}],"
        " behavior: {scale_up: {stabilization_window: 0, select: min, policies:"
        " [{type: pods, value: 2, period: 30s}]},"
        " scale_down: {stabilization_window: 5m, select: disabled}},"
        " vertical: {mode: recommend, percentile: 95%, margin: 0.2, half_life: 12h,"
        " min: {cpu: 50m, memory: 32Mi}, max: {cpu: 2, memory: 1Gi}}}"
    )
    assert w.autoscale == Autoscale(
        min=2,
        max=20,
        metrics=(
            MetricTarget("cpu", 0.7),
            MetricTarget("memory", 0.8),
            MetricTarget("rps", 100.0),
            MetricTarget("inflight", 8.5),
            MetricTarget("p99", 0.25),
            MetricTarget("app", 10.0, name="queue_depth", port="metrics", path="/stats"),
        ),
        behavior=Behavior(
            scale_up=ScalingRules(0.0, "min", (ScalingPolicy("pods", 2, 30.0),)),
            scale_down=replace(SCALE_DOWN_DEFAULT, stabilization_window=300.0, select="disabled"),
        ),
        tolerance=0.05,
        interval=15.0,
        startup_grace=60.0,
        idle_after=30.0,
        vertical=Vertical("recommend", 0.95, 0.2, 43200.0, 50, 2000, 32 << 20, 1 << 30),
    )
    assert w.replicas == 2


def test_hpas_defaults_can_be_configured_explicitly() -> None:
    """The benchmark's comparison row: HPA's 15 s evaluation and 300 s down window."""
    a = web("{max: 5, interval: 15s, behavior: {scale_down: {stabilization_window: 300s}}}")
    assert a.autoscale is not None
    assert a.autoscale.interval == 15.0
    assert a.autoscale.behavior.scale_down.stabilization_window == 300.0
    assert a.autoscale.behavior.scale_up == SCALE_UP_DEFAULT


def test_only_vertical_keeps_the_replicas() -> None:
    w = parse_spec(
        HTTP + "    replicas: 3\n    autoscale: {vertical: {mode: auto}}\n", file="t.yaml"
    ).workloads[0]
    assert w.replicas == 3
    assert w.autoscale is not None and not w.autoscale.horizontal
    # no replica bounds: the count is the spec's (test_vertical_only_bounds.py)
    assert w.autoscale.vertical == Vertical(mode="auto")


def test_scale_to_zero_on_http_and_grpc_ports() -> None:
    head = "app: a\nservices:\n  s:\n    command: x\n    ports: {api: {protocol: grpc}, h: 80}\n"
    w = web("{min: 0, max: 3, metrics: [{rps: 50}]}", head)
    assert w.autoscale is not None and w.autoscale.min == 0
    assert w.replicas == 1  # starts with one; the last goes after idle_after


def test_the_application_metric_port_defaults_to_the_only_port() -> None:
    head = "app: a\nservices:\n  s:\n    command: x\n    ports: {http: 0}\n"
    w = web("{max: 3, metrics: [{metric: jobs_waiting, target: 4}]}", head)
    assert w.autoscale is not None
    assert w.autoscale.metrics == (MetricTarget("app", 4.0, "jobs_waiting", "http", "/metrics"),)


@pytest.mark.parametrize(
    ("block", "path", "words", "hint"),
    [
        ("{min: 5, max: 3}", "autoscale.min", "min (5) is more than max (3)", "at most max"),
        ("{max: 0}", "autoscale.max", "max must be from 1 to 1000, not 0", "min: 0"),
        ("{max: -2}", "autoscale.max", "not -2", "most replicas"),
        ("{min: 1}", "autoscale.max", "autoscale needs max", "max: 10"),
        ("{max: lots}", "autoscale.max", "whole number", "1 to 1000"),
        (
            "{max: 3, metrics: [{cpux: 70%}]}",
            "autoscale.metrics[0].cpux",
            "unknown metric",
            "'cpu'",
        ),
        ("{max: 3, metrics: [{latency: 1s}]}", "autoscale.metrics[0].latency", "unknown", "p99"),
        ("{max: 3, metrics: [{cpu: 0%}]}", "autoscale.metrics[0].cpu", "more than 0%", "70%"),
        ("{max: 3, metrics: [{cpu: 70}]}", "autoscale.metrics[0].cpu", "percentage", "cpu: 70%"),
        (
            "{max: 3, metrics: [{memory: 120%}]}",
            "autoscale.metrics[0].memory",
            "OOM-killed",
            "at most 100%",
        ),
        ("{max: 3, metrics: [{cpu: 150%}]}", "autoscale.metrics[0].cpu", "a quota", "at most 100%"),
        ("{max: 3, metrics: [{rps: 0}]}", "autoscale.metrics[0].rps", "more than 0", "rps: 100"),
        ("{max: 3, metrics: [{rps: -5}]}", "autoscale.metrics[0].rps", "more than 0", ""),
        ("{max: 3, metrics: [{inflight: many}]}", "autoscale.metrics[0].inflight", "number", ""),
        ("{max: 3, metrics: [{p99: 0ms}]}", "autoscale.metrics[0].p99", "more than 0", "250ms"),
        (
            "{max: 3, metrics: [{metric: q, target: 0, port: metrics}]}",
            "autoscale.metrics[0].target",
            "more than 0",
            "",
        ),
        (
            "{max: 3, metrics: [{metric: q, target: 1, port: metrcs}]}",
            "autoscale.metrics[0].port",
            "no port named 'metrcs'",
            "did you mean 'metrics'",
        ),
        (
            "{max: 3, metrics: [{metric: q, target: 1}]}",
            "autoscale.metrics[0].port",
            "needs the port",
            "http, metrics",
        ),
        (
            "{max: 3, metrics: [{metric: 9q, target: 1, port: http}]}",
            "autoscale.metrics[0].metric",
            "not a Prometheus metric name",
            "queue_depth",
        ),
        (  # a trailing newline: never found in a page (it passed a `^...$` match)
            '{max: 3, metrics: [{metric: "queue_depth\\n", target: 1, port: http}]}',
            "autoscale.metrics[0].metric",
            "not a Prometheus metric name",
            "queue_depth",
        ),
        ("{max: 3, metrics: [{cpu: 70%, rps: 5}]}", "autoscale.metrics[0]", "one name", ""),
        ("{max: 3, metrics: []}", "autoscale.metrics", "at least one metric", "cpu: 70%"),
        ("{max: 3, metrics: [{rps: 1}, {rps: 2}]}", "autoscale.metrics[1]", "twice", ""),
        ("{max: 3, tolerance: 150%}", "autoscale.tolerance", "out of range", "10%"),
        ("{max: 3, interval: 10ms}", "autoscale.interval", "at least 100ms", "15s"),
        ("{max: 3, idle_after: 0s}", "autoscale.idle_after", "at least 1s", "5m"),
        ("{max: 3, maxx: 4}", "autoscale.maxx", "unknown key", "did you mean 'max'"),
        ("{}", "autoscale", "autoscale is empty", "max: 10"),
        (
            "{max: 3, behavior: {scale_down: {policies: [{type: pod, value: 1, period: 15s}]}}}",
            "autoscale.behavior.scale_down.policies[0].type",
            "unknown policy type 'pod'",
            "did you mean 'pods'",
        ),
        (
            "{max: 3, behavior: {scale_up: {policies: [{type: pods, value: 0, period: 15s}]}}}",
            "autoscale.behavior.scale_up.policies[0].value",
            "out of range",
            "at least 1",
        ),
        (
            "{max: 3, behavior: {scale_down: {policies: [{type: percent, value: 150, "
            "period: 1m}]}}}",
            "autoscale.behavior.scale_down.policies[0].value",
            "out of range",
            "1 to 100",
        ),
        (
            "{max: 3, behavior: {scale_up: {policies: [{type: pods, value: 1}]}}}",
            "autoscale.behavior.scale_up.policies[0]",
            "needs period",
            "15s",
        ),
        (
            "{max: 3, behavior: {scale_up: {policies: []}}}",
            "autoscale.behavior.scale_up.policies",
            "at least one policy",
            "select: disabled",
        ),
        (
            "{max: 3, behavior: {scale_up: {select: most}}}",
            "autoscale.behavior.scale_up.select",
            "unknown policy selection",
            "max, min, disabled",
        ),
        (
            "{max: 3, behavior: {scale_down: {stabilization_window: 2h}}}",
            "autoscale.behavior.scale_down.stabilization_window",
            "too long",
            "3600s",
        ),
        (
            "{vertical: {mode: automatic}}",
            "autoscale.vertical.mode",
            "unknown vertical mode",
            "did you mean 'auto'",
        ),
        (
            "{vertical: {percentile: 0}}",
            "autoscale.vertical.percentile",
            "out of range",
            "90%",
        ),
        (
            "{vertical: {min: {memory: 2Gi}, max: {memory: 1Gi}}}",
            "autoscale.vertical.min.memory",
            "least memory (2Gi) is more than the most (1Gi)",
            "at most vertical.max.memory",
        ),
        (
            "{max: 3, metrics: [{cpu: 70%}], vertical: {mode: auto}}",
            "autoscale.vertical.mode",
            "fight",
            "mode: recommend",
        ),
    ],
)
def test_bad_autoscale_is_a_located_spec_error(
    block: str, path: str, words: str, hint: str
) -> None:
    issue = one(block)
    assert issue.path == f"services.web.{path}", issue.render()
    assert words in issue.message, issue.render()
    assert hint in issue.hint, issue.render()
    assert issue.file == "t.yaml" and issue.line == 6


def test_scale_to_zero_on_a_tcp_service_is_refused() -> None:
    issue = one("{min: 0, max: 3, metrics: [{cpu: 50%}]}", TCP)
    assert issue.path == "services.db.autoscale.min"
    assert "scale to zero" in issue.message and "port 'pg' is tcp" in issue.message
    assert "min: 1" in issue.hint


def test_scale_to_zero_needs_a_port() -> None:
    head = "app: a\nservices:\n  w:\n    command: x\n"
    issue = one("{min: 0, max: 3, metrics: [{cpu: 50%}]}", head)
    assert issue.path == "services.w.autoscale.min" and "declares no ports" in issue.message


def test_scale_to_zero_with_one_tcp_port_among_http_ones_is_refused() -> None:
    head = "app: a\nservices:\n  w:\n    command: x\n    ports: {h: 80, raw: {protocol: tcp}}\n"
    issue = one("{min: 0, max: 3, metrics: [{rps: 5}]}", head)
    assert "port 'raw' is tcp" in issue.message


def test_an_application_metric_on_a_grpc_port_is_refused() -> None:
    head = "app: a\nservices:\n  w:\n    command: x\n    ports: {api: {protocol: grpc}}\n"
    issue = one("{max: 3, metrics: [{metric: q, target: 1}]}", head)
    assert issue.path == "services.w.autoscale.metrics[0].port"
    assert "is grpc" in issue.message and "HTTP GET" in issue.message
    assert "http or http2" in issue.hint


def test_an_application_metric_on_an_http2_port_is_kept() -> None:
    # read over HTTP/2 without TLS (h2c), as the mesh speaks to it (agent/gauges.py)
    head = "app: a\nservices:\n  w:\n    command: x\n    ports: {m: {protocol: http2}}\n"
    w = web("{max: 3, metrics: [{metric: q, target: 1}]}", head)
    assert w.autoscale is not None
    assert [(m.kind, m.name, m.port) for m in w.autoscale.metrics] == [("app", "q", "m")]


def test_autoscale_on_a_job_is_refused() -> None:
    found = issues("app: a\njobs:\n  j:\n    command: x\n    autoscale: {max: 3}\n")
    assert len(found) == 1
    assert found[0].path == "jobs.j.autoscale" and found[0].line == 5
    assert "applies to services" in found[0].message and "parallelism" in found[0].hint


@pytest.mark.parametrize("replicas", [0, 11])
def test_replicas_outside_the_range_are_refused(replicas: int) -> None:
    found = issues(HTTP + f"    replicas: {replicas}\n    autoscale: {{min: 1, max: 10}}\n")
    assert len(found) == 1, [i.render() for i in found]
    assert found[0].path == "services.web.replicas" and found[0].line == 6
    assert f"replicas {replicas} is outside the autoscale range 1..10" in found[0].message
    assert "leave replicas out" in found[0].hint


def test_replicas_within_the_range_are_kept() -> None:
    w = parse_spec(HTTP + "    replicas: 4\n    autoscale: {min: 2, max: 10}\n").workloads[0]
    assert w.replicas == 4


def test_every_mistake_is_listed() -> None:
    found = issues(
        HTTP + "    autoscale:\n      min: 7\n      max: 3\n      metrics: [{cpu: 0%}, {qps: 4}]\n"
    )
    assert [i.path for i in found] == [
        "services.web.autoscale.min",
        "services.web.autoscale.metrics[0].cpu",
        "services.web.autoscale.metrics[1].qps",
    ]


def test_the_store_keeps_autoscale() -> None:
    w = web(
        "{min: 0, max: 8, metrics: [{rps: 100}, {p99: 250ms}, {metric: q, target: 3,"
        " port: metrics}], behavior: {scale_down: {select: min, policies:"
        " [{type: pods, value: 1, period: 1m}, {type: percent, value: 10, period: 1m}]}},"
        " vertical: {mode: recommend, max: {cpu: 2}}}"
    )
    app = Application("a", (w,))
    back = from_data(Application, json.loads(json.dumps(to_data(app))))
    assert back == app and back.workloads[0].autoscale == w.autoscale
    # a record written before autoscale existed decodes to none
    old = to_data(Application("a", (Workload("web", ports=(Port("http"),)),)))
    del old["workloads"][0]["autoscale"]
    assert from_data(Application, old).workloads[0].autoscale is None


def test_an_autoscale_change_needs_no_new_instances() -> None:
    """A policy is read by the autoscaler, not by the instances: it moves no version (else
    every tweak of max would replace every instance). No rollout after an upgrade either:
    next_record compares the fingerprints of the old and new specs as decoded now
    (tests/unit/server/test_rollout_records.py)."""
    w = Workload(
        name="web",
        command=("python3", "app.py"),
        ports=(Port("http"),),
        resources=replace(Workload("x").resources, cpu=250),
        replicas=3,
    )
    scaled = replace(w, autoscale=Autoscale(min=1, max=5, metrics=(MetricTarget("rps", 10),)))
    assert fingerprint(scaled) == fingerprint(w)


def test_the_documented_example_is_valid() -> None:
    text = (ROOT / "docs" / "autoscaling.md").read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    w = parse_spec("app: a\n" + block, file="autoscaling.md").workloads[0]
    assert w.autoscale is not None and len(w.autoscale.metrics) == 6
    assert w.autoscale.behavior == Behavior()  # the example spells out the defaults
