"""A ``vertical:``-only autoscale block (no horizontal metrics) carries no replica bounds:
the spec's ``replicas`` is the service's count and nothing else, so a change of it reads as
a replica change in ``apply``'s diff, not also as "autoscale policy changed" (issue #13).
And the most replicas is one number (``MAX_REPLICAS``), for the spec and for ``scale``."""

from __future__ import annotations

import pytest

from elastin.model import spec
from elastin.model.spec import parse_spec
from elastin.server import apps
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
    replicas: 2
    autoscale:
      vertical: {mode: recommend}
"""


def test_a_vertical_only_policy_does_not_depend_on_replicas() -> None:
    two = parse_spec(SPEC).workload("web")
    five = parse_spec(SPEC.replace("replicas: 2", "replicas: 5")).workload("web")
    assert two is not None and five is not None
    assert two.autoscale is not None and not two.autoscale.horizontal
    assert two.autoscale == five.autoscale
    assert (two.replicas, five.replicas) == (2, 5)
    zero = parse_spec(SPEC.replace("replicas: 2", "replicas: 0")).workload("web")
    assert zero is not None and zero.replicas == 0 and zero.autoscale == two.autoscale


async def test_apply_reports_only_the_replica_change() -> None:
    cluster = await Cluster.open(MemoryStore(), seed=1, clock=FakeClock())
    await cluster.apps.apply(SPEC)
    res = await cluster.apps.apply(SPEC.replace("replicas: 2", "replicas: 3"), dry_run=True)
    (change,) = res.changes
    assert (change.change, change.detail) == ("scale", "replicas 2 -> 3")
    res = await cluster.apps.apply(SPEC.replace("replicas: 2", "replicas: 3"))
    assert [(c.change, c.detail) for c in res.changes] == [("scale", "replicas 2 -> 3")]
    rec = await cluster.views.application("shop")
    w = rec.app.workload("web")
    assert w is not None and w.replicas == 3


async def test_the_most_replicas_is_one_number() -> None:
    assert apps.MAX_REPLICAS is spec.MAX_REPLICAS
    cluster = await Cluster.open(MemoryStore(), seed=1, clock=FakeClock())
    await cluster.apps.apply(SPEC)
    with pytest.raises(Invalid, match=f"between 0 and {spec.MAX_REPLICAS}"):
        await cluster.apps.scale("shop/web", spec.MAX_REPLICAS + 1)
    with pytest.raises(Exception, match="replicas"):
        parse_spec(SPEC.replace("replicas: 2", f"replicas: {spec.MAX_REPLICAS + 1}"))
