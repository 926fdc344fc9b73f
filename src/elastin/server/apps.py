"""Applications: apply a spec (or show its diff), scale, stop and delete; where one stands.

Every change is one compare-and-set transaction on the application's record (``repo``); after
it commits, ``changes.committed`` wakes the applier, the mesh feed and blocking queries. What
each workload runs is versioned: a workload's spec version goes up when anything that needs
new instances changes (its fingerprint: everything but the replica count).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, replace
from typing import Literal

from elastin.clock import SYSTEM, Clock
from elastin.model.codec import to_data
from elastin.model.errors import SpecError
from elastin.model.settled import Settlement, settlement
from elastin.model.spec import parse_spec
from elastin.model.workload import Application, Workload
from elastin.server.errors import Conflict, Invalid, NotFound
from elastin.server.repo import AppRecord, Repo
from elastin.server.waits import Changes

MAX_REPLICAS = 1000
_TRIES = 10  # compare-and-set attempts before a change gives up with a conflict


def workload_fingerprint(w: Workload) -> str:
    """A hash of everything that needs a restart when it changes (not the replica count)."""
    data = to_data(replace(w, replicas=0))
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class WorkloadChange:
    workload: str
    type: str  # service | job
    change: Literal["add", "update", "scale", "remove", "unchanged"]
    detail: str = ""


@dataclass(frozen=True)
class ApplyResult:
    app: str
    changes: tuple[WorkloadChange, ...]
    dry_run: bool
    generation: int = 0
    revision: int = 0

    @property
    def changed(self) -> bool:
        return any(c.change != "unchanged" for c in self.changes)


def diff_apps(old: AppRecord | None, new: Application) -> tuple[WorkloadChange, ...]:
    """What applying ``new`` over ``old`` changes, per workload (pure)."""
    out: list[WorkloadChange] = []
    old_app = old.app if old else Application(new.name)
    for w in new.workloads:
        prev = old_app.workload(w.name)
        if prev is None:
            out.append(WorkloadChange(w.name, w.type, "add", f"{w.instances} instance(s)"))
        elif workload_fingerprint(prev) != workload_fingerprint(w):
            out.append(WorkloadChange(w.name, w.type, "update", "spec changed: instances replaced"))
        elif prev.replicas != w.replicas:
            out.append(
                WorkloadChange(w.name, w.type, "scale", f"replicas {prev.replicas} -> {w.replicas}")
            )
        elif old and w.name in old.stopped:
            out.append(WorkloadChange(w.name, w.type, "update", "was stopped: starts again"))
        else:
            out.append(WorkloadChange(w.name, w.type, "unchanged"))
    for w in old_app.workloads:
        if new.workload(w.name) is None:
            out.append(WorkloadChange(w.name, w.type, "remove", "instances stopped"))
    return tuple(out)


def next_record(old: AppRecord | None, app: Application, source: str, now: float) -> AppRecord:
    """The record of ``app`` applied over ``old``: versions bumped where fingerprints moved."""
    versions = dict(old.versions) if old else {}
    fps = dict(old.fingerprints) if old else {}
    for w in app.workloads:
        fp = workload_fingerprint(w)
        if fps.get(w.name) != fp:
            versions[w.name] = versions.get(w.name, 0) + 1
            fps[w.name] = fp
    for name in list(versions):
        if app.workload(name) is None:
            versions.pop(name)
            fps.pop(name, None)
    return AppRecord(
        app=app,
        versions=versions,
        fingerprints=fps,
        stopped=(),
        generation=(old.generation + 1) if old else 1,
        source=source,
        applied_at=now,
    )


def parse(text: str, file: str, base_dir: str) -> Application:
    """Parse a spec file; its errors become one ``Invalid`` with every located issue."""
    try:
        return parse_spec(text, file=file, base_dir=base_dir)
    except SpecError as e:
        raise Invalid(
            e.render(),
            hint="fix the file and apply it again; nothing was changed",
            issues=[i.to_dict() for i in e.issues],
        ) from None


class Apps:
    def __init__(self, repo: Repo, changes: Changes, clock: Clock = SYSTEM) -> None:
        self.repo = repo
        self.changes = changes
        self.clock = clock

    async def apply(
        self, text: str, *, file: str = "", base_dir: str = "", dry_run: bool = False
    ) -> ApplyResult:
        # off the loop: a big spec must not stall every other call meanwhile
        app = await asyncio.to_thread(parse, text, file, base_dir)
        for _ in range(_TRIES):
            found = await self.repo.get_app(app.name)
            old, mod_rev = found if found else (None, 0)
            changes = diff_apps(old, app)
            if dry_run:
                return ApplyResult(app.name, changes, True, old.generation if old else 0)
            record = next_record(old, app, file, self.clock.time())
            summary = ", ".join(
                f"{c.workload}: {c.change}" for c in changes if c.change != "unchanged"
            )
            rev = await self.repo.commit(
                compares=[self.repo.compare_app(app.name, mod_rev)],
                apps=[record],
                events=[("app.applied", app.name, summary or "no changes", "info")],
            )
            if rev is not None:
                self.changes.committed(rev)
                return ApplyResult(app.name, changes, False, record.generation, rev)
        raise Conflict(f"application {app.name!r} kept changing while applying; try again")

    async def delete(self, name: str) -> int:
        found = await self.repo.get_app(name)
        if not found:
            raise NotFound(f"no application named {name!r}", hint="see `elastin ps` for the list")
        rev = await self.repo.commit(
            compares=[self.repo.compare_app(name, found[1])],
            delete_apps=[name],
            events=[("app.deleted", name, "application deleted; stopping its instances", "info")],
        )
        if rev is None:
            raise Conflict(f"application {name!r} changed while deleting; try again")
        self.changes.committed(rev)
        return rev

    async def find_workload(self, ref: str) -> tuple[AppRecord, int, Workload]:
        """A workload by ``name`` or ``app/name``, with its record and the record's mod_rev."""
        app_name, _, wl = ref.rpartition("/")
        matches: list[tuple[AppRecord, Workload]] = []
        for rec in await self.repo.list_apps():
            if app_name and rec.app.name != app_name:
                continue
            w = rec.app.workload(wl)
            if w is not None:
                matches.append((rec, w))
        if not matches:
            raise NotFound(f"no service or job named {ref!r}", hint="see `elastin ps`")
        if len(matches) > 1:
            names = ", ".join(f"{r.app.name}/{w.name}" for r, w in matches)
            raise Invalid(f"{ref!r} is ambiguous: {names}", hint="name it as app/service")
        rec, w = matches[0]
        found = await self.repo.get_app(rec.app.name)
        if found is None:
            raise Conflict(f"application {rec.app.name!r} was deleted meanwhile; try again")
        return found[0], found[1], w

    async def scale(self, ref: str, replicas: int) -> AppRecord:
        if not 0 <= replicas <= MAX_REPLICAS:
            raise Invalid(f"replicas must be between 0 and {MAX_REPLICAS}, got {replicas}")
        rec, mod_rev, w = await self.find_workload(ref)
        if w.type != "service":
            raise Invalid(f"{ref!r} is a job; only services have replicas")
        new_app = replace(
            rec.app,
            workloads=tuple(
                replace(x, replicas=replicas) if x.name == w.name else x for x in rec.app.workloads
            ),
        )
        new = replace(
            rec,
            app=new_app,
            stopped=tuple(s for s in rec.stopped if s != w.name),
            generation=rec.generation + 1,
        )
        subject = f"{rec.app.name}/{w.name}"
        rev = await self.repo.commit(
            compares=[self.repo.compare_app(rec.app.name, mod_rev)],
            apps=[new],
            events=[("service.scaled", subject, f"replicas {w.replicas} -> {replicas}", "info")],
        )
        if rev is None:
            raise Conflict(f"{ref!r} changed while scaling; try again")
        self.changes.committed(rev)
        return new

    async def stop(self, ref: str | None) -> list[str]:
        """Stop one workload (``ref``) or every workload of every application."""
        stopped: list[str] = []
        if ref:
            recs = [(r, m, [w.name]) for r, m, w in [await self.find_workload(ref)]]
        else:
            recs = []
            for rec in await self.repo.list_apps():
                found = await self.repo.get_app(rec.app.name)
                if found:
                    recs.append((found[0], found[1], [w.name for w in found[0].app.workloads]))
        for rec, mod_rev, names in recs:
            new = replace(
                rec,
                stopped=tuple(sorted(set(rec.stopped) | set(names))),
                generation=rec.generation + 1,
            )
            rev = await self.repo.commit(
                compares=[self.repo.compare_app(rec.app.name, mod_rev)],
                apps=[new],
                events=[("app.stopped", rec.app.name, "stopped: " + ", ".join(names), "info")],
            )
            if rev is None:
                raise Conflict(f"{rec.app.name!r} changed while stopping; try again")
            self.changes.committed(rev)
            stopped += [f"{rec.app.name}/{n}" for n in names]
        return stopped

    async def settlement(self, name: str, index: int, wait: float) -> tuple[int, Settlement]:
        """Where application ``name`` stands (``elastin.model.settled``); blocks up to
        ``wait`` s for a change past ``index`` (the index of an earlier answer)."""
        rev = await self.changes.mesh.wait_past(index, wait)
        found = await self.repo.get_app(name)
        if found is None:
            raise NotFound(f"no application named {name!r}", hint="see `elastin ps`")
        allocs, _ = await self.repo.list_allocs()
        rec = found[0]
        return rev, settlement(rec.app, rec.stopped, allocs)
