"""The neutral mesh model: what one node's proxy should do, independent of any proxy.

Pure data and pure functions (layer 2: it imports only ``elastin.model``). The server builds a
snapshot per node with it, the client decodes the snapshots an agent receives, and the
renderers of ``elastin.mesh.haproxy`` turn a snapshot into a proxy's configuration and a diff
into runtime commands.

A ``MeshSnapshot`` is a versioned, immutable description of one node's data plane:

* ``Listener`` — a local socket the proxy accepts on. Each calling workload's upstream gets
  one (its ``owner``, so the mesh knows the caller from where the call arrived), forwarding to
  one cluster. The model also allows a listener without an owner, for inbound traffic; none
  is built yet.
* ``Cluster`` — a service port: its protocol, load-balancing policy, endpoints and the
  policies (timeouts, retries, circuit breaking, outlier detection, rate limit, access log).
* ``Endpoint`` — one instance address of a cluster, ready or not.

Modules:
    types      the frozen, validated types above (``MeshModelError`` when one cannot be built)
    registry   the service registry: every named port of every service, with its endpoints
    build      ``build_snapshot``: applications and allocations -> one node's snapshot
    diff       ``diff``: what changed between two snapshots, and whether it needs a reload
    names      ``ClusterName``: a cluster's structured name (app, service, port), built and
               parsed in this one place
    traffic    ``ClusterStats`` / ``EndpointStats``: a proxy's counters per service port, and
               the table of ``elastin_mesh_*`` metrics made from them
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
