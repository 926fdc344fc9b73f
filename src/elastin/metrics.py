"""Prometheus metric families, as every metrics endpoint of Elastin builds them (the agent's
``/metrics`` and the server's ``/v1/metrics``, both served by ``prometheus_client``).

Layer 1 beside ``model``: it imports nothing of ours.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

MetricKind = Literal["counter", "gauge"]


def family(
    name: str,
    help_: str,
    kind: MetricKind,
    samples: Iterable[tuple[Mapping[str, str], float]] = (),
    labels: Sequence[str] = (),
) -> Metric:
    """A metric family; every sample has exactly the label names ``labels``."""
    fam = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(
        name, help_, labels=labels
    )
    for values, value in samples:
        fam.add_metric([values[k] for k in labels], value)
    return fam
