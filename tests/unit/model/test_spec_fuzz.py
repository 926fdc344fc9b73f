"""Any input to the spec parser gives a located spec error or a valid application, never
another exception (a traceback in the CLI, a 500 from the API). A fixed budget of generated
specs built from the spec's own keys, hostile values and YAML tags, and of raw text."""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from elastin.model.errors import SpecError
from elastin.model.spec import COMMON_KEYS, JOB_KEYS, SERVICE_KEYS, parse_spec
from elastin.model.workload import Application

KEYS = sorted(
    {*COMMON_KEYS, *SERVICE_KEYS, *JOB_KEYS}
    | {"cpu", "memory", "disk", "http", "tcp", "grpc", "exec", "port", "protocol", "mode"}
    | {"request_timeout", "retries", "retry_on", "lb", "op", "attribute", "value", "interval"}
)
HOSTILE = st.sampled_from(
    [
        float("nan"),
        float("inf"),
        -1,
        0,
        10**400,
        1.0e308,
        "",
        "x",
        "500m",
        "1e400Gi",
        "/h\r\nX: y",
        "a\0b",
        "9" * 400,
        True,
        None,
    ]
)
SCALARS = st.one_of(HOSTILE, st.integers(), st.floats(), st.text(max_size=12))
VALUES: Any = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)
    ),
    max_leaves=12,
)
WORKLOAD = st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6)
SPEC = st.fixed_dictionaries(
    {"app": st.one_of(st.just("shop"), SCALARS)},
    optional={
        "services": st.dictionaries(st.sampled_from(["web", "api", "x"]), WORKLOAD, max_size=2),
        "jobs": st.dictionaries(st.sampled_from(["report", "web"]), WORKLOAD, max_size=2),
    },
)
TAGS = st.sampled_from(["!!bool", "!!float", "!!int", "!!timestamp", "!!binary", "!!null", ""])


def parses_or_refuses(text: str) -> None:
    try:
        app = parse_spec(text, file="fuzz.yaml")
    except SpecError as e:
        assert e.issues and e.render()
    else:
        assert isinstance(app, Application) and app.name


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SPEC, TAGS)
def test_structured_specs_parse_or_are_refused(spec: dict[str, Any], tag: str) -> None:
    text = yaml.safe_dump(spec, allow_unicode=True)
    parses_or_refuses(text)
    if tag:  # the same with a tag on the application's name
        parses_or_refuses(text.replace("app: ", f"app: {tag} ", 1))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_text_parses_or_is_refused(text: str) -> None:
    parses_or_refuses(text)


def test_deep_nesting_is_refused_not_a_crash() -> None:
    parses_or_refuses("app: a\nservices:\n  w:\n    env: " + "[" * 3000 + "\n")


def test_the_reproducers_found_by_fuzzing_are_spec_errors() -> None:
    """Each of these raised TypeError, KeyError, AttributeError, IndexError, OverflowError or
    RecursionError before (a traceback in the CLI, a 500 from the API)."""
    svc = "app: a\nservices:\n  w:\n    command: x\n"
    for text in (
        "app: a\njobs:\n  j:\n    command: x\n    completions: x\n    parallelism: 2\n",
        "app: !!bool x\nservices:\n  w: {command: x}\n",
        "app: !!timestamp x\nservices:\n  w: {command: x}\n",
        "app: !!float\nservices:\n  w: {command: x}\n",
        svc + "    ports: {http: {port: 1, protocol: [a]}}\n",
        svc + "    stop_grace: " + "9" * 400 + "\n",
        svc + "    resources: {cpu: " + "9" * 400 + ", memory: 1Mi}\n",
        svc + "    resources: {cpu: 1, memory: 1.0e+308}\n",
        svc + "    env: " + "[" * 3000 + "\n",
        'app: ""\nservices:\n  w: {command: x}\n',
    ):
        if "!!" in text:  # a tag its text does not fit: the text as written, or refused
            parses_or_refuses(text)
            continue
        try:
            parse_spec(text)
        except SpecError as e:
            assert e.issues
        else:
            raise AssertionError(f"accepted: {text[:60]!r}")
