"""Retry conditions: one list, what a spec may write is what the mesh model takes and what the
renderer writes into HAProxy's ``retry-on``, and docs/spec.md names the same ones."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from elastin.mesh.haproxy.render import Paths, render
from elastin.mesh.model import Cluster, RetryPolicy
from elastin.mesh.model import types as mesh_types
from elastin.mesh.model.build import build_snapshot
from elastin.mesh.model.types import MeshModelError
from elastin.model import spec
from elastin.model.errors import SpecError
from elastin.model.workload import MeshPolicy

DOCS = Path(__file__).resolve().parents[4] / "docs" / "spec.md"


def spec_with(retry_on: str) -> str:
    return (
        "app: shop\nservices:\n  api:\n    command: x\n    ports: {http: 8080}\n"
        f"    mesh: {{retry_on: {retry_on}}}\n"
    )


def test_one_list() -> None:
    assert mesh_types.RETRY_CONDITIONS is spec.RETRY_CONDITIONS
    assert set(MeshPolicy().retry_on) <= set(spec.RETRY_CONDITIONS)
    assert set(RetryPolicy().on) <= set(spec.RETRY_CONDITIONS)


def test_every_condition_a_spec_may_write_reaches_haproxy() -> None:
    app = spec.parse_spec(spec_with("[" + ", ".join(spec.RETRY_CONDITIONS) + "]"))
    (api,) = app.workloads
    assert api.mesh.retry_on == spec.RETRY_CONDITIONS
    snap = build_snapshot(1, "n1", {"shop": app}, [], {"n1": "127.0.0.1"})
    (cluster,) = snap.clusters
    assert cluster.retries.on == spec.RETRY_CONDITIONS
    assert "    retry-on " + " ".join(spec.RETRY_CONDITIONS) + "\n" in render(snap, Paths("/x"))


def test_numbers_are_status_codes() -> None:
    (api,) = spec.parse_spec(spec_with("[503, '502']")).workloads
    assert api.mesh.retry_on == ("503", "502")


@pytest.mark.parametrize("condition", ["0rtt-rejected", "sometimes", "404"])
def test_other_conditions_are_refused_by_spec_and_model(condition: str) -> None:
    with pytest.raises(SpecError) as e:
        spec.parse_spec(spec_with(f"[conn-failure, {condition}]"))
    (issue,) = e.value.issues
    assert issue.path == "services.api.mesh.retry_on"
    assert f"unknown retry condition '{condition}'" in issue.message
    assert ", ".join(spec.RETRY_CONDITIONS) in issue.hint
    with pytest.raises(MeshModelError):
        Cluster("shop.api.http", retries=RetryPolicy(on=(condition,)))


def test_the_spec_docs_name_the_same_conditions() -> None:
    (row,) = [line for line in DOCS.read_text().splitlines() if line.startswith("| `retry_on`")]
    named = {w for code in re.findall(r"`([^`]+)`", row) for w in re.findall(r"[\w-]+", code)}
    assert named - {"retry_on"} == set(spec.RETRY_CONDITIONS)
