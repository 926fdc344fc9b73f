"""From one snapshot to the next: what changed, and whether a proxy must reload for it.

Endpoint churn — an endpoint added, removed, moved, reweighted, turning ready or not — is
applied to a running proxy without a reload (``ClusterChange``). Anything structural — a
listener or cluster added or removed, a policy or protocol changed — sets ``reload``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from elastin.mesh.model.types import Endpoint, MeshSnapshot


@dataclass(frozen=True)
class ClusterChange:
    cluster: str
    added: tuple[Endpoint, ...] = ()
    removed: tuple[Endpoint, ...] = ()
    moved: tuple[Endpoint, ...] = ()  # same id, new address or port (the new endpoint)
    reweighted: tuple[Endpoint, ...] = ()
    readiness: tuple[Endpoint, ...] = ()  # same id, ready flipped (the new endpoint)

    def is_empty(self) -> bool:
        return not (self.added or self.removed or self.moved or self.reweighted or self.readiness)


@dataclass(frozen=True)
class MeshDiff:
    reload: bool
    reasons: tuple[str, ...] = ()
    changes: tuple[ClusterChange, ...] = field(default_factory=tuple)

    def is_empty(self) -> bool:
        return not self.reload and all(c.is_empty() for c in self.changes)


def diff(old: MeshSnapshot | None, new: MeshSnapshot) -> MeshDiff:
    if old is None:
        return MeshDiff(True, ("first configuration",))
    reasons: list[str] = []
    if old.metrics_port != new.metrics_port:
        reasons.append("metrics port changed")
    old_l = {lst.name: lst for lst in old.listeners}
    new_l = {lst.name: lst for lst in new.listeners}
    for name in sorted(old_l.keys() ^ new_l.keys()):
        reasons.append(f"listener {name} {'added' if name in new_l else 'removed'}")
    for name in sorted(old_l.keys() & new_l.keys()):
        if old_l[name] != new_l[name]:
            reasons.append(f"listener {name} changed")
    old_c = {c.name: c for c in old.clusters}
    new_c = {c.name: c for c in new.clusters}
    for name in sorted(old_c.keys() ^ new_c.keys()):
        reasons.append(f"cluster {name} {'added' if name in new_c else 'removed'}")
    changes: list[ClusterChange] = []
    for name in sorted(old_c.keys() & new_c.keys()):
        a, b = old_c[name], new_c[name]
        if a.policy() != b.policy():
            reasons.append(f"cluster {name} policy changed")
            continue
        before = {e.id: e for e in a.endpoints}
        after = {e.id: e for e in b.endpoints}
        added = tuple(after[i] for i in sorted(after.keys() - before.keys()))
        removed = tuple(before[i] for i in sorted(before.keys() - after.keys()))
        moved, reweighted, readiness = [], [], []
        for i in sorted(before.keys() & after.keys()):
            x, y = before[i], after[i]
            if (x.address, x.port) != (y.address, y.port):
                moved.append(y)
            if x.weight != y.weight or x.local != y.local:
                reweighted.append(y)
            if x.ready != y.ready:
                readiness.append(y)
        change = ClusterChange(
            name, added, removed, tuple(moved), tuple(reweighted), tuple(readiness)
        )
        if not change.is_empty():
            changes.append(change)
    return MeshDiff(bool(reasons), tuple(reasons), tuple(changes))
