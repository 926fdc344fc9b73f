"""The neutral mesh model: what one node's proxy should do, independent of any proxy.

A ``MeshSnapshot`` is a versioned, immutable description of one node's data plane:

* ``Listener`` — a local socket the proxy accepts on: an *upstream* listener belongs to one
  calling workload (so the mesh knows the caller from where the call arrived) and forwards to
  one cluster; an *inbound* listener fronts a local service.
* ``Cluster`` — a service port: its protocol, load-balancing policy, endpoints and the
  resilience policies (timeouts, retries, circuit breaking, outlier detection).
* ``Endpoint`` — one ready-or-not instance address of a cluster.

Everything here is pure data plus pure functions (``diff``); renderers (``mesh.haproxy``)
turn a snapshot into a proxy's configuration, and a diff into runtime commands.
"""

from __future__ import annotations

from elastin.mesh.model.diff import ClusterChange, MeshDiff, diff
from elastin.mesh.model.types import (
    CircuitBreaker,
    Cluster,
    Endpoint,
    Fault,
    LbPolicy,
    Listener,
    MeshSnapshot,
    OutlierDetection,
    RetryPolicy,
    Timeouts,
)

__all__ = [
    "CircuitBreaker",
    "Cluster",
    "ClusterChange",
    "Endpoint",
    "Fault",
    "LbPolicy",
    "Listener",
    "MeshDiff",
    "MeshSnapshot",
    "OutlierDetection",
    "RetryPolicy",
    "Timeouts",
    "diff",
]
