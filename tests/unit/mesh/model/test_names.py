"""The mesh's structured names: one textual form, one parser, and they agree (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from elastin.mesh.model import Cluster
from elastin.mesh.model.build import build_clusters
from elastin.mesh.model.names import ClusterName
from elastin.model.cluster import Allocation
from elastin.model.spec import NAME_RE, parse_spec

# what the spec accepts for application, service and port names (model.spec.NAME_RE)
spec_names = st.from_regex(NAME_RE, fullmatch=True)
parts = st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True)


def test_the_textual_form_is_app_service_port() -> None:
    name = ClusterName("shop", "api", "http")
    assert str(name) == "shop.api.http"
    assert ClusterName.parse("shop.api.http") == name
    assert name.labels == {"app": "shop", "service": "api", "port": "http"}
    assert Cluster("shop.api.http").service_port == name


@pytest.mark.parametrize(
    "text", ["", "shop", "shop.api", "shop..http", ".api.http", "a.b.c.d", "shop.a pi.http"]
)
def test_a_malformed_name_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        ClusterName.parse(text)


def test_a_part_with_a_dot_cannot_be_built() -> None:
    with pytest.raises(ValueError, match="service"):
        ClusterName("shop", "a.b", "http")


@given(spec_names, spec_names, spec_names)
def test_spec_names_round_trip(app: str, service: str, port: str) -> None:
    name = ClusterName(app, service, port)
    assert ClusterName.parse(str(name)) == name
    assert Cluster(str(name)).service_port == name


@given(st.lists(parts, min_size=1, max_size=5).map(".".join))
def test_whatever_parses_prints_back_the_same(text: str) -> None:
    try:
        name = ClusterName.parse(text)
    except ValueError:
        assert text.count(".") != 2
        return
    assert str(name) == text


def test_the_builder_names_clusters_with_it() -> None:
    app = parse_spec("app: shop\nservices:\n  api:\n    command: x\n    ports: {http: 8080}\n")
    alloc = Allocation(
        id="a1", app="shop", workload="api", index=0, status="running", ports=(("http", 9000),)
    )
    (cluster,) = build_clusters({"shop": app}, [alloc], {})
    assert cluster.service_port == ClusterName("shop", "api", "http")
