"""Autoscaling: the pure core that decides a service's replicas and requests from its metrics.

It sits beside the scheduler in the layers (docs/architecture.md): it imports only the model
and the clock, does no I/O and reads no clock of its own, so the server (which feeds it the
agents' one-second metrics and turns its decisions into scales and resizes:
``server/autoscaler.py``, ``server/vertical.py``) and the tests drive it alike.

Modules:
    horizontal  ``decide``: replicas from per-replica observations, HPA v2's semantics
                (tolerance, the largest proposal, not-ready replicas and missing metrics,
                stabilization windows, rate policies), scale to zero and back
    vertical    ``Recommender``: cpu and memory requests from a decaying histogram of usage
                (VPA's percentile plus a margin, bounds, an OOM kill raising memory at once)

docs/autoscaling.md describes the semantics and how they differ from Kubernetes' HPA and VPA.
"""
