"""Turn a ``MeshDiff`` into HAProxy runtime API commands (pure).

Endpoint churn never needs a reload: a new endpoint is ``add server`` (with the same
parameters the renderer writes) followed by ``enable server`` and ``enable health``; a removed
one is put in maintenance first (no new requests; in-flight ones finish) and deleted after;
moves, weights and readiness are ``set server``. When ``diff.reload`` is set the caller
renders the new configuration and reloads instead.
"""

from __future__ import annotations

from elastin.mesh.haproxy.render import backend_name, effective_weight, server_name, server_params
from elastin.mesh.model.diff import MeshDiff
from elastin.mesh.model.types import MeshSnapshot


def runtime_commands(d: MeshDiff, new: MeshSnapshot) -> tuple[list[str], list[str]]:
    """``(now, after_drain)``: commands to send at once, and deletions to send once the
    removed servers have no connections left."""
    now: list[str] = []
    later: list[str] = []
    if d.reload:
        return now, later
    for ch in d.changes:
        cluster = new.cluster(ch.cluster)
        if cluster is None:
            continue
        b = backend_name(ch.cluster)
        for e in ch.removed:
            s = f"{b}/{server_name(e)}"
            now.append(f"set server {s} state maint")
            later.append(f"del server {s}")
        for e in ch.added:
            s = f"{b}/{server_name(e)}"
            now.append(f"add server {s} {e.address}:{e.port} {server_params(cluster, e)}")
            if cluster.outlier.enabled:
                now.append(f"enable health {s}")
            if e.ready:
                now.append(f"enable server {s}")
        for e in ch.moved:
            now.append(f"set server {b}/{server_name(e)} addr {e.address} port {e.port}")
        for e in ch.reweighted:
            now.append(f"set server {b}/{server_name(e)} weight {effective_weight(e)}")
        for e in ch.readiness:
            state = "ready" if e.ready else "maint"
            now.append(f"set server {b}/{server_name(e)} state {state}")
    return now, later
