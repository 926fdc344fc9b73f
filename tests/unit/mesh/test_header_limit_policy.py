"""``mesh.max_request_headers`` and ``mesh.max_request_header_bytes``: parsed from the spec
(errors in the spec's style), carried into the mesh model, rejected there when out of range
(tests/unit/mesh/haproxy/test_render_edges.py has the rules they render)."""

from __future__ import annotations

import pytest

from elastin.mesh.model import Cluster
from elastin.mesh.model.build import build_clusters
from elastin.mesh.model.types import MeshModelError
from elastin.model.errors import SpecError
from elastin.model.spec import parse_spec
from elastin.model.workload import MeshPolicy

W = "app: a\nservices:\n  w:\n    command: x\n    ports: {http: 0}\n"


def mesh(block: str) -> MeshPolicy:
    return parse_spec(W + f"    mesh: {block}\n", "t.yaml").workloads[0].mesh


def test_the_defaults_are_envoys_count_and_what_the_proxy_holds() -> None:
    m = parse_spec(W, "t.yaml").workloads[0].mesh
    assert (m.max_request_headers, m.max_request_header_bytes) == (100, 0)  # 0: the proxy's


@pytest.mark.parametrize(
    ("value", "expected"), [("8Ki", 8192), ("4096", 4096), ("1Ki", 1024), ("14Ki", 14336)]
)
def test_header_bytes_are_bytes_or_a_size(value: str, expected: int) -> None:
    assert mesh(f"{{max_request_header_bytes: {value}}}").max_request_header_bytes == expected


def test_a_service_may_ask_for_up_to_200_headers() -> None:
    assert mesh("{max_request_headers: 200}").max_request_headers == 200


@pytest.mark.parametrize(
    ("block", "words"),
    [
        ("{max_request_headers: 0}", "0 is out of range | use 1..200"),
        ("{max_request_headers: 201}", "201 is out of range | use 1..200"),
        ("{max_request_headers: many}", "must be a whole number"),
        ("{max_request_header_bytes: 15Ki}", "15360 bytes (15 KiB) is out of range | write bytes"),
        ("{max_request_header_bytes: 512}", "512 bytes is out of range"),
        ("{max_request_header_bytes: 8 apples}", "has an unknown unit 'apples'"),
        ("{max_request_header_bytes: [1]}", "is not a size"),
    ],
)
def test_out_of_range_limits_are_spec_errors(block: str, words: str) -> None:
    with pytest.raises(SpecError) as e:
        mesh(block)
    [issue] = e.value.issues
    assert issue.path.startswith("services.w.mesh.max_request_header"), issue.path
    assert words in f"{issue.message} | {issue.hint}", (issue.message, issue.hint)


def test_the_limits_reach_the_cluster() -> None:
    app = parse_spec(
        W + "    mesh: {max_request_headers: 60, max_request_header_bytes: 2Ki}\n", "t.yaml"
    )
    [cluster] = build_clusters({"a": app}, [], {})
    assert (cluster.max_request_headers, cluster.max_request_header_bytes) == (60, 2048)


@pytest.mark.parametrize(
    "kw", [{"max_request_headers": 0}, {"max_request_header_bytes": 20 * 1024}]
)
def test_the_mesh_model_rejects_limits_out_of_range(kw: dict[str, int]) -> None:
    with pytest.raises(MeshModelError, match="is outside"):
        Cluster("a.w.http", **kw)  # type: ignore[arg-type]
