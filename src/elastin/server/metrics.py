"""The server's ``/v1/metrics`` body, rendered by ``prometheus_client`` (pure: data in,
bytes out).

``render_metrics`` takes what the route reads (the store's revision, the allocations, the
usage agents measured, every node's mesh counters from its heartbeats) and renders it through
a private ``CollectorRegistry`` with one collector, ``generate_latest``:

* ``elastin_store_revision`` — the state store's current revision;
* ``elastin_allocations{status}`` — allocations by status;
* ``elastin_allocation_cpu_millicores`` / ``elastin_allocation_memory_bytes``
  ``{app, workload, index}`` — measured use of each live allocation;
* ``elastin_mesh_*{app, service, port, node}`` — each node's proxy's traffic per service
  port (``mesh.model.traffic.TRAFFIC_METRICS``);
* ``elastin_store_writes_disk_full_total`` / ``elastin_store_writes_refused_total`` /
  ``elastin_store_reserve_bytes`` — state writes that met a full disk (each retried), those
  refused after their retries, and the size of the reserve file kept for stops and deletes
  (SQLite store only: ``store_counters``).

The API layer serves it with ``CONTENT_TYPE``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from elastin.mesh.model.traffic import ClusterStats, traffic_samples
from elastin.metrics import MetricKind, family
from elastin.model.cluster import Allocation, Usage

# what generate_latest writes (and what prometheus_client's own server sends with it)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

TRAFFIC_LABELS = ("app", "service", "port", "node")

# (key of store_counters, metric name, help, kind)
STORE_METRICS: tuple[tuple[str, str, str, MetricKind], ...] = (
    (
        "writes_disk_full",
        "elastin_store_writes_disk_full",
        "State writes that failed for lack of disk space (each was retried).",
        "counter",
    ),
    (
        "writes_refused",
        "elastin_store_writes_refused",
        "State writes refused after their retries on a full disk.",
        "counter",
    ),
    (
        "reserve_bytes",
        "elastin_store_reserve_bytes",
        "Size of the reserve file kept for stops and deletes on a full disk (0: released).",
        "gauge",
    ),
)


def store_counters(store: Any) -> dict[str, int]:
    """The state store's own counters (``SqliteStore.stats()``); none for other stores."""
    stats = getattr(store, "stats", None)
    return dict(stats()) if callable(stats) else {}


def server_families(
    revision: int,
    allocs: Sequence[Allocation],
    usage: Mapping[str, Usage],
    mesh: Mapping[str, Mapping[str, ClusterStats]],
    store: Mapping[str, int] | None = None,
) -> list[Metric]:
    """The metric families of ``/v1/metrics``; ``mesh`` is node id -> cluster -> stats,
    ``store`` the store's counters (``store_counters``)."""
    counts: dict[str, int] = {}
    for a in allocs:
        counts[a.status] = counts.get(a.status, 0) + 1
    out = [
        family(
            "elastin_store_revision",
            "Current revision of the state store.",
            "gauge",
            [({}, revision)],
        ),
        family(
            "elastin_allocations",
            "Allocations by status.",
            "gauge",
            (({"status": s}, n) for s, n in sorted(counts.items())),
            ("status",),
        ),
    ]
    measured = [(a, u) for a in allocs if not a.terminal and (u := usage.get(a.id)) is not None]
    for name, help_, value in (
        ("cpu_millicores", "Measured cpu use.", lambda u: u.cpu),
        ("memory_bytes", "Measured memory use (working set).", lambda u: float(u.memory)),
    ):
        out.append(
            family(
                f"elastin_allocation_{name}",
                help_,
                "gauge",
                (
                    ({"app": a.app, "workload": a.workload, "index": str(a.index)}, value(u))
                    for a, u in measured
                ),
                ("app", "workload", "index"),
            )
        )
    for key, name, help_, kind in STORE_METRICS:
        if store and key in store:
            out.append(family(name, help_, kind, [({}, float(store[key]))]))
    groups = [(mesh[n], {"node": n}) for n in sorted(mesh)]
    for metric, samples in traffic_samples(groups):
        out.append(family(metric.name, metric.help, metric.kind, samples, TRAFFIC_LABELS))
    return out


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def render_metrics(
    revision: int,
    allocs: Sequence[Allocation],
    usage: Mapping[str, Usage],
    mesh: Mapping[str, Mapping[str, ClusterStats]],
    store: Mapping[str, int] | None = None,
) -> bytes:
    """The body of ``/v1/metrics`` (Prometheus text format 0.0.4; see ``CONTENT_TYPE``)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(server_families(revision, allocs, usage, mesh, store)))
    return generate_latest(registry)
