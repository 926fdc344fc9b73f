"""The mesh model: validation, snapshot diffs and the runtime commands they become."""

from __future__ import annotations

from dataclasses import replace

import pytest

from elastin.mesh.haproxy.render import Paths, render
from elastin.mesh.haproxy.runtime import runtime_commands
from elastin.mesh.model import Cluster, Endpoint, Listener, MeshSnapshot, RetryPolicy, diff
from elastin.mesh.model.types import MeshModelError


def snap(endpoints: tuple[Endpoint, ...], version: int = 1, **cluster: object) -> MeshSnapshot:
    c = Cluster("shop.web.http", endpoints=endpoints, **cluster)  # type: ignore[arg-type]
    return MeshSnapshot(version, "n1", (Listener("caller.web", 20001, "shop.web.http"),), (c,))


E1 = Endpoint("a1-http", "127.0.0.1", 8001)
E2 = Endpoint("a2-http", "127.0.0.1", 8002)


def test_validation() -> None:
    with pytest.raises(MeshModelError):
        Endpoint("bad id", "127.0.0.1", 80)
    with pytest.raises(MeshModelError):
        Endpoint("x", "127.0.0.1", 70000)
    with pytest.raises(MeshModelError):
        Cluster("c", lb="hash_header")
    with pytest.raises(MeshModelError):
        RetryPolicy(on=("sometimes",))
    with pytest.raises(MeshModelError):
        MeshSnapshot(1, listeners=(Listener("l", 1000, "missing"),))
    with pytest.raises(MeshModelError):
        Cluster("c", endpoints=(E1, E1))


def test_endpoint_churn_needs_no_reload() -> None:
    old = snap((E1,))
    moved = Endpoint("a1-http", "127.0.0.2", 8101, weight=50, ready=False)
    new = snap((moved, E2), version=2)
    d = diff(old, new)
    assert not d.reload
    (ch,) = d.changes
    assert ch.added == (E2,) and ch.moved == (moved,) and ch.reweighted == (moved,)
    assert ch.readiness == (moved,)
    now, later = runtime_commands(d, new)
    assert now[0].startswith("add server c_shop.web.http/e_a2-http 127.0.0.1:8002 weight 100")
    assert "enable server c_shop.web.http/e_a2-http" in now
    assert "set server c_shop.web.http/e_a1-http addr 127.0.0.2 port 8101" in now
    assert "set server c_shop.web.http/e_a1-http weight 50" in now
    assert "set server c_shop.web.http/e_a1-http state maint" in now
    assert later == []
    d2 = diff(new, snap((E2,), version=3))
    now2, later2 = runtime_commands(d2, snap((E2,), version=3))
    assert now2 == ["set server c_shop.web.http/e_a1-http state maint"]
    assert later2 == ["del server c_shop.web.http/e_a1-http"]


def test_structural_changes_reload() -> None:
    assert diff(None, snap((E1,))).reload
    d = diff(snap((E1,)), snap((E1,), lb="least_conn"))
    assert d.reload and "policy changed" in d.reasons[0]
    assert runtime_commands(d, snap((E1,))) == ([], [])
    other = MeshSnapshot(2, "n1", (), (Cluster("shop.web.http", endpoints=(E1,)),))
    assert "listener caller.web removed" in diff(snap((E1,)), other).reasons
    assert diff(snap((E1,)), snap((E1,), version=9)).is_empty()


def test_render_maps_the_policies() -> None:
    text = render(
        MeshSnapshot(
            3,
            "n1",
            (Listener("caller.web", 20001, "shop.web.http", owner="shop/frontend"),),
            (
                Cluster(
                    "shop.web.http",
                    lb="least_request",
                    endpoints=(E1, Endpoint("a3-http", "127.0.0.1", 8003, ready=False, local=True)),
                ),
            ),
            metrics_port=9101,
        ),
        Paths("/run/x.sock"),
    )
    assert "balance random(2)" in text
    assert "server e_a3-http 127.0.0.1:8003 weight 256" in text and text.count("disabled") == 1
    assert 'x-elastin-caller "shop/frontend"' in text
    assert "prometheus-exporter" in text and "bind 127.0.0.1:9101" in text
    assert "no endpoint of shop.web.http is up" in text
    assert "retry-on conn-failure empty-response response-timeout" in text


def test_build_snapshot_from_apps_and_allocations() -> None:
    from elastin.mesh.model.build import build_snapshot
    from elastin.model.cluster import Allocation
    from elastin.model.spec import parse_spec

    app = parse_spec(
        "app: shop\nservices:\n"
        "  web:\n    command: x\n    upstreams: [api]\n"
        "  api:\n    command: y\n    ports: {grpc: {port: 0, protocol: grpc}}\n"
        "    health: {tcp: grpc}\n    mesh: {lb: least_request, max_connections: 50,"
        " fault: {abort: 503, abort_percent: 5}}\n"
    )

    def alloc(
        i: str,
        w: str,
        node: str,
        ports: dict[str, int],
        healthy: bool | None,
        status: str = "running",
    ) -> Allocation:
        return Allocation(
            id=i,
            app="shop",
            workload=w,
            index=0,
            node_id=node,
            status=status,
            ports=tuple(ports.items()),
            healthy=healthy,
        )  # type: ignore[arg-type]

    allocs = [
        alloc("w1", "web", "n1", {"upstream.api": 21000}, None),
        alloc("w2", "web", "n2", {"upstream.api": 21001}, None),
        alloc("a1", "api", "n1", {"grpc": 9001}, True),
        alloc("a2", "api", "n2", {"grpc": 9002}, None),  # not yet checked: not ready
        alloc("a3", "api", "n2", {"grpc": 9003}, True, status="pending"),
    ]
    snap = build_snapshot(7, "n1", {"shop": app}, allocs, {"n1": "127.0.0.1", "n2": "10.0.0.2"})
    (c,) = snap.clusters
    assert c.name == "shop.api.grpc" and c.protocol == "grpc" and c.lb == "least_request"
    assert c.breaker.max_connections == 50
    # a request waits for a free connection as long as it may wait for its answer: a
    # backlog during a scale-up stays queued for the new replicas, not 503ed after 1 s
    assert c.breaker.queue_timeout == c.timeouts.request == 30.0
    assert [(e.id, e.address, e.port, e.ready, e.local) for e in c.endpoints] == [
        ("a1-grpc", "127.0.0.1", 9001, True, True),
        ("a2-grpc", "10.0.0.2", 9002, False, False),
    ]
    (lst,) = snap.listeners  # only the caller on this node
    assert lst.fault is not None and (lst.fault.abort_status, lst.fault.abort_percent) == (503, 5)
    assert (lst.port, lst.cluster, lst.owner, lst.protocol) == (
        21000,
        "shop.api.grpc",
        "shop/web",
        "grpc",
    )
    assert "bind 127.0.0.1:21000 proto h2" in render(snap, Paths("/tmp/x.sock"))


def test_localize_and_wants_ack() -> None:
    from elastin.mesh.model.build import localize, wants_ack
    from elastin.model.cluster import Allocation

    shared = snap((Endpoint("a1-p", "h1", 1, node="n1"), Endpoint("a2-p", "h2", 2, node="n2")))
    mine = localize(MeshSnapshot(shared.version, "n2", shared.listeners, shared.clusters))
    assert [e.local for e in mine.clusters[0].endpoints] == [False, True]
    a = Allocation(id="x", app="a", workload="w", index=0, status="running")
    assert not wants_ack([a])
    assert wants_ack([replace(a, desired="stop")])  # someone drains: agents must say
    assert not wants_ack([replace(a, desired="stop", status="stopped")])


def test_access_log_can_be_turned_off_per_service() -> None:
    on = render(snap((E1,)), Paths("/tmp/x.sock"))
    off = render(snap((E1,), access_log=False), Paths("/tmp/x.sock"))
    assert "log-format" in on and "no log" not in on
    assert "log-format" not in off and "    no log" in off
    assert diff(snap((E1,)), snap((E1,), version=2, access_log=False)).reload  # structural
