"""``apply`` and ``scale`` on an autoscaled service (issue #13): re-applying the spec keeps the
replica count the autoscaler chose (clamped to the new bounds), as Kubernetes advises when an
HPA owns a Deployment's replicas; ``elastin scale`` accepts a count within the bounds or 0
(pauses the autoscaler) and refuses any other with what to do instead."""

from __future__ import annotations

import pytest

from elastin.server.cluster import Cluster
from elastin.server.errors import Invalid
from elastin.store.memory import MemoryStore
from elastin.testing import FakeClock

SPEC = """
app: shop
services:
  web:
    command: python3 -m http.server
    resources: {cpu: 100m, memory: 32Mi}
    autoscale: {min: 1, max: 5, metrics: [{rps: 10}]}
  plain:
    command: python3 -m http.server
    resources: {cpu: 100m, memory: 32Mi}
    replicas: 2
"""


@pytest.fixture
async def cluster() -> Cluster:
    return await Cluster.open(MemoryStore(), seed=1, clock=FakeClock())


async def replicas(cluster: Cluster, name: str) -> int:
    rec = await cluster.views.application("shop")
    w = rec.app.workload(name)
    assert w is not None
    return w.replicas


async def test_reapply_keeps_the_autoscaled_count(cluster: Cluster) -> None:
    await cluster.apps.apply(SPEC)
    assert await replicas(cluster, "web") == 1  # max(min, 1) on the first apply
    await cluster.apps.scale("shop/web", 4)  # as the autoscaler would
    res = await cluster.apps.apply(SPEC)
    assert {c.workload: c.change for c in res.changes}["web"] == "unchanged"
    assert await replicas(cluster, "web") == 4
    # a service without autoscale follows its spec as before
    await cluster.apps.scale("shop/plain", 5)
    await cluster.apps.apply(SPEC)
    assert await replicas(cluster, "plain") == 2


async def test_reapply_clamps_the_count_to_new_bounds(cluster: Cluster) -> None:
    await cluster.apps.apply(SPEC)
    await cluster.apps.scale("shop/web", 5)
    res = await cluster.apps.apply(SPEC.replace("max: 5", "max: 3"), dry_run=True)
    change = {c.workload: c for c in res.changes}["web"]
    assert (change.change, change.detail) == (
        "scale",
        "replicas 5 -> 3; autoscale policy changed; autoscaled 1..3: keeps 3 replicas, not the"
        " spec's 1 (`elastin scale` sets the count)",
    )
    await cluster.apps.apply(SPEC.replace("max: 5", "max: 3"))
    assert await replicas(cluster, "web") == 3
    await cluster.apps.apply(SPEC.replace("min: 1", "min: 4"))
    assert await replicas(cluster, "web") == 4


async def test_reapply_keeps_a_paused_service_at_zero(cluster: Cluster) -> None:
    await cluster.apps.apply(SPEC)
    await cluster.apps.scale("shop/web", 0)  # paused on purpose
    await cluster.apps.apply(SPEC)
    assert await replicas(cluster, "web") == 0


async def test_a_spec_that_drops_autoscale_takes_its_replicas_again(cluster: Cluster) -> None:
    await cluster.apps.apply(SPEC)
    await cluster.apps.scale("shop/web", 4)
    plain = SPEC.replace("autoscale: {min: 1, max: 5, metrics: [{rps: 10}]}", "replicas: 2")
    await cluster.apps.apply(plain)
    assert await replicas(cluster, "web") == 2


async def test_scale_outside_the_autoscale_bounds_is_refused(cluster: Cluster) -> None:
    await cluster.apps.apply(SPEC)
    with pytest.raises(Invalid) as err:
        await cluster.apps.scale("web", 7)
    assert "1..5" in err.value.message and "autoscale" in err.value.message
    assert err.value.hint and "min" in err.value.hint and "max" in err.value.hint
    assert await replicas(cluster, "web") == 1
    await cluster.apps.scale("web", 3)  # within the bounds: the autoscaler goes on from 3
    assert await replicas(cluster, "web") == 3


async def test_scale_to_zero_of_a_min_0_service_says_the_next_request_starts_it(
    cluster: Cluster,
) -> None:
    """`elastin scale X 0` pauses the autoscaler only when min is above 0; a `min: 0`
    service is started again by the next request the mesh holds, and the message and the
    refusal's hint say so (review of issue #13, finding 4)."""
    await cluster.apps.apply(
        SPEC.replace("{min: 1, max: 5", "{min: 0, max: 5").replace(
            "    autoscale:", "    ports: {http: 0}\n    autoscale:", 1
        )
    )
    await cluster.apps.scale("shop/web", 0)
    (ev,) = [e for e in await cluster.views.events(0, 0) if e.type == "service.scaled"]
    assert "paused" not in ev.message
    assert "the next request starts it again" in ev.message
    assert "`elastin stop shop/web` keeps it down" in ev.message
    with pytest.raises(Invalid) as err:
        await cluster.apps.scale("shop/web", 7)
    assert err.value.hint and "pauses" not in err.value.hint
    assert "scales it to zero (the next request starts it again)" in err.value.hint


async def test_scale_to_zero_with_min_above_0_pauses(cluster: Cluster) -> None:
    await cluster.apps.apply(SPEC)
    await cluster.apps.scale("shop/web", 0)
    (ev,) = [e for e in await cluster.views.events(0, 0) if e.type == "service.scaled"]
    assert "autoscaling paused until scaled again" in ev.message


async def test_scale_and_autoscale_do_not_read_the_allocations(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Their record changes need no allocation: none are listed (review of issue #13,
    finding 10); a change with nothing to write writes nothing."""
    await cluster.apps.apply(SPEC)
    calls: list[int] = []
    real = cluster.apps.repo.list_allocs

    async def counted() -> object:
        calls.append(1)
        return await real()

    monkeypatch.setattr(cluster.apps.repo, "list_allocs", counted)
    await cluster.apps.scale("shop/web", 3)
    assert await cluster.apps.autoscale("shop/web", 3, 4, "scale up", {"desired": 4}) is not None
    assert await cluster.apps.autoscale("shop/web", 3, 5, "stale", {}) is None  # not at 3
    assert calls == []
    assert await replicas(cluster, "web") == 4


def test_autoscaling_added_to_a_service_at_zero_starts_from_the_spec() -> None:
    """A service that was not autoscaled and ran 0 replicas was not paused by the autoscaler:
    adding autoscale: starts it from the spec's count (min..max), not from 0."""
    from elastin.model.workload import Autoscale, MetricTarget, Workload
    from elastin.server.apps import autoscaled_count

    before = Workload("web", replicas=0)
    after = Workload("web", replicas=2, autoscale=Autoscale(2, 5, (MetricTarget("rps", 10),)))
    assert autoscaled_count(before, after) == 2
    paused = Workload("web", replicas=0, autoscale=after.autoscale)
    assert autoscaled_count(paused, after) == 0  # paused on purpose: stays


async def test_apply_says_when_the_spec_s_replicas_is_not_applied(cluster: Cluster) -> None:
    await cluster.apps.apply(SPEC)
    await cluster.apps.scale("shop/web", 4)
    res = await cluster.apps.apply(SPEC, dry_run=True)
    change = {c.workload: c for c in res.changes}["web"]
    assert (change.change, change.detail) == (
        "unchanged",
        "autoscaled 1..5: keeps 4 replicas, not the spec's 1 (`elastin scale` sets the count)",
    )
