"""Spec fields that take one of a fixed set of names: every one is checked the same way (the
value named, a did-you-mean, the choices), wherever it stands."""

from __future__ import annotations

import pytest

from elastin.model.errors import SpecError, SpecIssue
from elastin.model.spec import (
    KINDS,
    LB_POLICIES,
    OPS,
    PROTOCOLS,
    RESTART_MODES,
    RETRY_CONDITIONS,
    parse_spec,
)

W = "app: a\nservices:\n  w:\n    command: x\n"


def one_issue(text: str) -> SpecIssue:
    with pytest.raises(SpecError) as err:
        parse_spec(text, file="t.yaml")
    (issue,) = err.value.issues
    return issue


@pytest.mark.parametrize(
    ("text", "path", "what", "close", "choices"),
    [
        (W + "    kind: tsk\n", "services.w.kind", "kind 'tsk'", "task", KINDS),
        (
            W + "    restart: alway\n",
            "services.w.restart",
            "restart policy",
            "always",
            RESTART_MODES,
        ),
        (
            W + "    restart: {policy: nevr}\n",
            "services.w.restart.policy",
            "restart policy 'nevr'",
            "never",
            RESTART_MODES,
        ),
        (
            W + "    ports: {api: {port: 80, protocol: grcp}}\n",
            "services.w.ports.api.protocol",
            "protocol 'grcp'",
            "grpc",
            PROTOCOLS,
        ),
        (
            W + "    mesh: {lb: least_con}\n",
            "services.w.mesh.lb",
            "load-balancing policy 'least_con'",
            "least_conn",
            LB_POLICIES,
        ),
        (
            W + "    mesh: {retry_on: [conn-failure, 5003]}\n",
            "services.w.mesh.retry_on",
            "retry condition '5003'",
            "503",
            RETRY_CONDITIONS,
        ),
        (
            W + "    constraints: [{attribute: node.name, op: '=', value: n1}]\n",
            "services.w.constraints[0].op",
            "operator '='",
            "==",
            OPS,
        ),
    ],
)
def test_an_unknown_name_is_named_with_a_did_you_mean_and_the_choices(
    text: str, path: str, what: str, close: str, choices: tuple[str, ...]
) -> None:
    issue = one_issue(text)
    assert issue.path == path and issue.line == 5, issue.render()
    assert issue.message.startswith(f"unknown {what}"), issue.render()
    assert issue.hint == f"did you mean {close!r}? use one of {', '.join(choices)}"


def test_a_structure_where_a_name_belongs_is_refused() -> None:
    issue = one_issue(W + "    constraints: [{attribute: node.name, op: [in], value: n1}]\n")
    assert issue.path == "services.w.constraints[0].op"
    assert issue.message == "the operator must be a name, not a list"


def test_the_choices_come_from_the_model_types() -> None:
    # derived from the Literal types of workload.py: an annotation that stops being a Literal
    # would leave a spec nothing to choose from
    for choices in (KINDS, RESTART_MODES, PROTOCOLS, OPS, LB_POLICIES):
        assert choices and all(isinstance(c, str) for c in choices)
    assert "not_in" in OPS and "hash_cookie" in LB_POLICIES and "on-failure" in RESTART_MODES
