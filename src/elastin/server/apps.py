"""Applications: apply a spec (or show its diff), scale, stop and delete; where one stands;
the versions of a workload (restart, re-run, undo, promote: ``elastin rollout``).

Every change is one compare-and-set transaction on the application's record (``repo``); after
it commits, ``changes.committed`` wakes the applier, the mesh feed and blocking queries. What
each workload runs is versioned: a workload's spec version goes up when anything that needs
new instances changes (its fingerprint: what the instances see, not the replica count nor the
mesh and autoscale policies; ``model.rollout.needs_new_instances``), and on
``elastin restart`` / ``elastin job run``. Version numbers never repeat for an application
name, even across ``down`` and a new ``up``: a new application is a new run, and what belonged
to the deleted one (its allocations, their logs) is history that no answer about the new one
counts. Each version is a ``model.rollout.Revision`` in the record's history; the applier
(``applier.py``) follows its rollout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

from elastin.clock import SYSTEM, Clock
from elastin.model.cluster import Allocation, EventSpec
from elastin.model.codec import to_data
from elastin.model.errors import SpecError
from elastin.model.rollout import (
    Cause,
    Revision,
    current,
    effective_policy,
    live,
    needs_new_instances,
    next_ready_due,
    record,
    stop_first,
    verdict,
)
from elastin.model.rollout import update as update_revision
from elastin.model.settled import Settlement, settlement
from elastin.model.spec import MAX_REPLICAS, parse_spec
from elastin.model.workload import Application, Workload
from elastin.server.errors import Conflict, Invalid, NotFound
from elastin.server.repo import AppRecord, Repo
from elastin.server.waits import Changes

_TRIES = 10  # compare-and-set attempts before a change gives up with a conflict
# one workload's record change (``Apps._try_change``): (record, workload, its allocations) ->
# the new record and its event, or None: nothing to write
_Change = Callable[[AppRecord, Workload, list[Allocation]], tuple[AppRecord, EventSpec] | None]


@dataclass(frozen=True)
class WorkloadChange:
    workload: str
    type: str  # service | job
    change: Literal["add", "update", "scale", "configure", "remove", "unchanged"]
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


def replacement(w: Workload) -> str:
    """How a changed workload's instances are replaced, in words (``apply``'s diff)."""
    if w.type == "job":
        return "spec changed: a new run"
    fixed = [p for p in w.ports if p.port]
    if fixed:
        ports = ", ".join(str(p.port) for p in fixed)
        return f"spec changed: replaced stop-first, one at a time (fixed port {ports})"
    u = effective_policy(w)
    canary = f", {u.canary} canary first" if u.canary else ""
    detail = f"surge {u.max_surge}, unavailable {u.max_unavailable}{canary}"
    if u.auto_revert:
        detail += f"; rolled back if not healthy within {u.healthy_deadline:g}s"
    return f"spec changed: rolling update ({detail})"


def diff_apps(old: AppRecord | None, new: Application) -> tuple[WorkloadChange, ...]:
    """What applying ``new`` over ``old`` changes, per workload (pure): one line each, saying
    every kind of change it holds (new instances, replicas, policies)."""
    out: list[WorkloadChange] = []
    old_app = old.app if old else Application(new.name)
    for w in new.workloads:
        prev = old_app.workload(w.name)
        if prev is None:
            out.append(WorkloadChange(w.name, w.type, "add", f"{w.instances} instance(s)"))
            continue
        if needs_new_instances(prev, w):
            out.append(WorkloadChange(w.name, w.type, "update", replacement(w)))
            continue
        if old and w.name in old.stopped:
            out.append(WorkloadChange(w.name, w.type, "update", "was stopped: starts again"))
            continue
        said = []
        if prev.replicas != w.replicas:
            said.append(f"replicas {prev.replicas} -> {w.replicas}")
        if prev.mesh != w.mesh:
            said.append("mesh policy changed: the proxies take it")
        if prev.autoscale != w.autoscale:
            said.append("autoscale policy changed")
        if not said:
            out.append(WorkloadChange(w.name, w.type, "unchanged"))
            continue
        kind: Literal["scale", "configure"] = (
            "scale" if prev.replicas != w.replicas else "configure"
        )
        detail = "; ".join(said) + ("" if kind == "scale" else ": no new instances")
        out.append(WorkloadChange(w.name, w.type, kind, detail))
    for w in old_app.workloads:
        if new.workload(w.name) is None:
            out.append(WorkloadChange(w.name, w.type, "remove", "instances stopped"))
    return tuple(out)


def autoscaled_count(prev: Workload | None, new: Workload) -> int:
    """The replicas ``new`` runs when applied over ``prev`` (pure). A service whose spec has
    horizontal autoscaling keeps the count it runs now (the autoscaler's, or a user's
    ``elastin scale``) within the new ``min``..``max``: re-applying the same file does not
    reset it to the spec's ``replicas`` (Kubernetes' advice under an HPA). An autoscaled
    service at 0 stays 0 (the autoscaler was paused on purpose, ``elastin scale NAME 0``). A
    new service, or one that was not autoscaled before, runs the spec's ``replicas``."""
    auto = new.autoscale
    if prev is None or new.type != "service" or auto is None or not auto.horizontal:
        return new.replicas
    if prev.autoscale is None or not prev.autoscale.horizontal:
        return new.replicas  # autoscaling starts now: from the spec's count
    if prev.replicas == 0:
        return 0
    return min(max(prev.replicas, auto.min), auto.max)


def not_applied(asked: Application, kept: Application) -> dict[str, str]:
    """Per autoscaled service whose spec's ``replicas`` ``keep_autoscaled`` did not apply,
    what ``apply`` says about it (the edit would otherwise vanish without a word)."""
    out = {}
    for w in asked.workloads:
        k = kept.workload(w.name)
        if k is not None and k.replicas != w.replicas and k.autoscale is not None:
            out[w.name] = (
                f"autoscaled {k.autoscale.min}..{k.autoscale.max}: keeps {k.replicas}"
                f" replicas, not the spec's {w.replicas} (`elastin scale` sets the count)"
            )
    return out


def keep_autoscaled(old: AppRecord | None, app: Application) -> Application:
    """``app`` with each autoscaled service's count as ``autoscaled_count`` says."""
    if old is None:
        return app
    workloads = tuple(
        replace(w, replicas=n)
        if (n := autoscaled_count(old.app.workload(w.name), w)) != w.replicas
        else w
        for w in app.workloads
    )
    return replace(app, workloads=workloads)


def scale_note(ref: str, w: Workload, replicas: int) -> str:
    """What ``elastin scale ref replicas`` means for ``w`` when it is autoscaled (pure; ""
    when it is not): a count within ``min..max`` is where the autoscaler goes on from; 0
    pauses the autoscaler when ``min`` is above 0 — but with ``min: 0`` it is only scaled to
    zero: the mesh holds the next request and the autoscaler starts a replica for it, so
    ``elastin stop`` is what keeps it down."""
    auto = w.autoscale
    if auto is None or not auto.horizontal:
        return ""
    if replicas == 0 and auto.min == 0:
        return (
            "scaled to zero: the next request starts it again (autoscale min 0); "
            f"`elastin stop {ref}` keeps it down"
        )
    if replicas == 0:
        return "autoscaling paused until scaled again"
    return f"autoscaled {auto.min}..{auto.max}: the autoscaler goes on from here"


def scale_refusal(ref: str, w: Workload, replicas: int) -> Invalid | None:
    """Why ``elastin scale ref replicas`` is refused for an autoscaled service, or None. The
    autoscaler owns the count within ``min``..``max``: a count within them is taken (the
    autoscaler goes on from it), 0 pauses it (as HPA does; with ``min: 0`` it only scales
    to zero, ``scale_note``); any other is refused."""
    auto = w.autoscale
    if auto is None or not auto.horizontal or replicas == 0 or auto.min <= replicas <= auto.max:
        return None
    zero = (
        "scales it to zero (the next request starts it again)"
        if auto.min == 0
        else "pauses the autoscaler"
    )
    return Invalid(
        f"{ref!r} is autoscaled between {auto.min} and {auto.max} replicas "
        f"(autoscale {auto.min}..{auto.max}); {replicas} is outside",
        hint="change autoscale.min / autoscale.max in the spec and apply it; "
        f"`elastin scale {ref} 0` {zero}, a count within "
        f"{auto.min}..{auto.max} is taken and the autoscaler goes on from it",
    )


def next_version(
    name: str, versions: dict[str, int], history: dict[str, tuple[Revision, ...]], floor: int
) -> int:
    """A version number ``name`` never had: above its current one, its history and ``floor``
    (the highest any allocation of the application's name ever ran)."""
    seen = [versions.get(name, 0), floor, *(r.version for r in history.get(name, ()))]
    return max(seen) + 1


def next_record(
    old: AppRecord | None,
    app: Application,
    source: str,
    now: float,
    floors: dict[str, int] | None = None,
) -> AppRecord:
    """The record of ``app`` applied over ``old``: versions bumped where a workload needs new
    instances (its spec applied before and the new one compared as this code decodes them).
    ``floors``: per workload, the highest version its allocations ran (a re-created
    application's versions start above it)."""
    versions = dict(old.versions) if old else {}
    history = dict(old.history) if old else {}
    floors = floors or {}
    for w in app.workloads:
        # the spec applied before, as this code decodes it: a hash stored by an earlier
        # release can differ for an unchanged spec (a field added since), so it is not used
        prev = old.app.workload(w.name) if old else None
        if w.name not in versions or needs_new_instances(prev, w):
            v = next_version(w.name, versions, history, floors.get(w.name, 0))
            versions[w.name] = v
            generation = (old.generation + 1) if old else 1
            rev = Revision(v, w, now, since=now, generation=generation)
            history[w.name] = record(history.get(w.name, ()), rev)
    for name in list(versions):
        if app.workload(name) is None:
            versions.pop(name)
            history.pop(name, None)
    return AppRecord(
        app=app,
        versions=versions,
        stopped=(),
        generation=(old.generation + 1) if old else 1,
        source=source,
        applied_at=now,
        history=history,
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
            asked, app = app, keep_autoscaled(old, app)
            notes = not_applied(asked, app)
            changes = tuple(
                replace(c, detail="; ".join(x for x in (c.detail, notes[c.workload]) if x))
                if c.workload in notes
                else c
                for c in diff_apps(old, app)
            )
            if dry_run:
                return ApplyResult(app.name, changes, True, old.generation if old else 0)
            floors = await self._floors(app.name) if old is None else None
            record = next_record(old, app, file, self.clock.time(), floors)
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

    async def _floors(self, name: str) -> dict[str, int]:
        """Per workload, the highest version any allocation of application ``name`` ran."""
        allocs, _ = await self.repo.list_allocs()
        out: dict[str, int] = {}
        for a in allocs:
            if a.app == name:
                out[a.workload] = max(out.get(a.workload, 0), a.spec_version)
        return out

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
        """Set a service's replicas (compare-and-set, retried: the applier writes the record
        as rollouts go on). Failed instances from before no longer hold their slots: a scale
        is a new request for instances."""
        if not 0 <= replicas <= MAX_REPLICAS:
            raise Invalid(f"replicas must be between 0 and {MAX_REPLICAS}, got {replicas}")

        def change(
            rec: AppRecord, w: Workload, _mine: list[Allocation]
        ) -> tuple[AppRecord, EventSpec]:
            if w.type != "service":
                raise Invalid(f"{ref!r} is a job; only services have replicas")
            if (refused := scale_refusal(ref, w, replicas)) is not None:
                raise refused
            msg = f"replicas {w.replicas} -> {replicas}"
            if note := scale_note(f"{rec.app.name}/{w.name}", w, replicas):
                msg += f" ({note})"
            new = self._scaled(rec, w, replicas)
            return new, ("service.scaled", f"{rec.app.name}/{w.name}", msg, "info")

        return await self._change(ref, change, allocs=False)

    async def autoscale(
        self, ref: str, expected: int, replicas: int, message: str, data: dict[str, object]
    ) -> AppRecord | None:
        """The autoscaler's change (``server/autoscaler.py``): ``ref`` from ``expected`` to
        ``replicas``, through the same compare-and-set as ``scale``, with an event naming why
        (``message``, ``data``). None, nothing written, when the service is not at
        ``expected`` any more (scaled, stopped or changed meanwhile: the next evaluation sees
        it)."""

        def change(
            rec: AppRecord, w: Workload, _mine: list[Allocation]
        ) -> tuple[AppRecord, EventSpec] | None:
            if w.replicas != expected or w.name in rec.stopped:
                return None
            new = self._scaled(rec, w, replicas)
            return new, ("service.autoscaled", f"{rec.app.name}/{w.name}", message, "info")

        return await self._try_change(ref, change, data, allocs=False)

    def _scaled(self, rec: AppRecord, w: Workload, replicas: int) -> AppRecord:
        """``rec`` with ``w`` at ``replicas`` (started again when it was stopped)."""
        history = rec.history.get(w.name, ())
        v = rec.versions.get(w.name, 0)
        if current(history, v) is not None:
            history = update_revision(history, v, since=self.clock.time())
        return replace(
            rec,
            app=replace(
                rec.app,
                workloads=tuple(
                    replace(x, replicas=replicas) if x.name == w.name else x
                    for x in rec.app.workloads
                ),
            ),
            stopped=tuple(s for s in rec.stopped if s != w.name),
            generation=rec.generation + 1,
            history={**rec.history, w.name: history} if history else rec.history,
        )

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

    async def _change(
        self, ref: str, change: _Change, data: dict[str, object] | None = None, allocs: bool = True
    ) -> AppRecord:
        """``_try_change`` with a ``change`` that always writes (or raises)."""
        new = await self._try_change(ref, change, data, allocs=allocs)
        if new is None:  # a bug in the caller, not a user's error
            raise AssertionError(f"the change of {ref!r} had nothing to write")
        return new

    async def _try_change(
        self, ref: str, change: _Change, data: dict[str, object] | None = None, allocs: bool = True
    ) -> AppRecord | None:
        """Change one workload's record with ``change`` (compare-and-set, retried): it gets
        the record, the workload and — when ``allocs`` — the workload's allocations (else an
        empty list: they are not read), and returns the new record and its event, or None for
        nothing to write (then None is returned). ``data``: the event's structured values."""
        for _ in range(_TRIES):
            rec, mod_rev, w = await self.find_workload(ref)
            mine: list[Allocation] = []
            if allocs:
                every, _ = await self.repo.list_allocs()
                mine = [a for a in every if a.app == rec.app.name and a.workload == w.name]
            out = change(rec, w, mine)
            if out is None:
                return None
            new, event = out
            rev = await self.repo.commit(
                compares=[self.repo.compare_app(rec.app.name, mod_rev)],
                apps=[new],
                events=[event],
                event_data=[data] if data else (),
            )
            if rev is not None:
                self.changes.committed(rev)
                return new
        raise Conflict(f"{ref!r} kept changing; try again")

    async def redeploy(self, ref: str, cause: Cause) -> AppRecord:
        """A new version of a workload with the same spec: ``elastin restart`` (a service's
        instances replaced by a rolling update) or ``elastin job run`` (a job runs again)."""

        def change(
            rec: AppRecord, w: Workload, mine: list[Allocation]
        ) -> tuple[AppRecord, EventSpec]:
            if cause == "run" and w.type != "job":
                raise Invalid(
                    f"{ref!r} is a service; `elastin job run` runs jobs",
                    hint=f"to replace a service's instances one by one: elastin restart {ref}",
                )
            if cause == "restart" and w.type != "service":
                raise Invalid(
                    f"{ref!r} is a job; `elastin restart` restarts services",
                    hint=f"to run a job again: elastin job run {ref}",
                )
            if w.name in rec.stopped:
                again = "`elastin apply FILE`"
                if w.type == "service":
                    again += f" or `elastin scale {ref} N`"
                raise Invalid(f"{ref!r} is stopped", hint=f"start it again with {again}")
            floor = max((a.spec_version for a in mine), default=0)
            v = next_version(w.name, rec.versions, rec.history, floor)
            now = self.clock.time()
            rev = Revision(v, w, now, cause, since=now, generation=rec.generation + 1)
            new = rec.with_version(w, v, record(rec.history.get(w.name, ()), rev))
            what = "runs again" if cause == "run" else "restarts (rolling)"
            subject = f"{rec.app.name}/{w.name}"
            return new, (f"{w.type}.{cause}", subject, f"version {v} {what}", "info")

        return await self._change(ref, change)

    async def undo(self, ref: str, to: int = 0) -> AppRecord:
        """Make an earlier version current again (``elastin rollout undo [--to N]``): by
        default the newest earlier one that was proven (stable). Its instances are reused
        when they still run; otherwise it comes back as a new version with that spec."""

        def change(
            rec: AppRecord, w: Workload, mine: list[Allocation]
        ) -> tuple[AppRecord, EventSpec]:
            history = rec.history.get(w.name, ())
            cur = rec.versions.get(w.name, 0)
            earlier = [r for r in history if r.version != cur]
            if to:
                target = next((r for r in reversed(history) if r.version == to), None)
                if target is None:
                    known = ", ".join(str(r.version) for r in history) or "none"
                    raise NotFound(
                        f"{ref!r} has no version {to} (kept: {known})",
                        hint=f"see elastin rollout history {ref}",
                    )
                if to == cur:
                    raise Invalid(f"version {to} of {ref!r} is already the current one")
            elif not earlier:
                raise Invalid(
                    f"{ref!r} has no earlier version to go back to",
                    hint=f"see elastin rollout history {ref}",
                )
            else:  # the newest earlier version that was proven, else the one before
                proven = [r for r in earlier if r.state == "stable"]
                target = (proven or earlier)[-1]
            hist = tuple(history)
            now, generation = self.clock.time(), rec.generation + 1
            if any(a.spec_version == target.version and live(a) for a in mine):
                v = target.version  # its instances still run: keep them
                again = Revision(v, target.workload, now, "undo", since=now, generation=generation)
                hist = record(hist, replace(again, state=target.state))
            else:
                floor = max((a.spec_version for a in mine), default=0)
                v = next_version(w.name, rec.versions, rec.history, floor)
                rev = Revision(v, target.workload, now, "undo", since=now, generation=generation)
                hist = record(hist, rev)
            new = rec.with_version(target.workload, v, hist)
            msg = f"back to the spec of version {target.version} (now version {v})"
            return new, ("rollout.undo", f"{rec.app.name}/{w.name}", msg, "info")

        return await self._change(ref, change)

    async def promote(self, ref: str) -> AppRecord:
        """Let a rollout waiting on its canaries go on (``elastin rollout promote``)."""

        def change(
            rec: AppRecord, w: Workload, mine: list[Allocation]
        ) -> tuple[AppRecord, EventSpec]:
            v = rec.versions.get(w.name, 0)
            rev = current(rec.history.get(w.name, ()), v)
            if rev is None or rev.state != "rolling" or w.update.canary == 0 or rev.promoted:
                raise Invalid(
                    f"{ref!r} has no rollout waiting for promotion",
                    hint=f"see elastin rollout status {ref}",
                )
            hist = update_revision(rec.history.get(w.name, ()), v, promoted_at=self.clock.time())
            new = replace(rec, history={**rec.history, w.name: hist}, generation=rec.generation + 1)
            msg = f"version {v} promoted: the rollout goes on"
            return new, ("rollout.promoted", f"{rec.app.name}/{w.name}", msg, "info")

        return await self._change(ref, change)

    async def rollout(self, ref: str) -> dict[str, object]:
        """Where a workload's rollout stands and its kept versions (``elastin rollout
        status`` / ``history``)."""
        rec, _, w = await self.find_workload(ref)
        allocs, _ = await self.repo.list_allocs()
        mine = [a for a in allocs if a.app == rec.app.name and a.workload == w.name]
        version = rec.versions.get(w.name, 0)
        history = rec.history.get(w.name, ())
        rev = current(history, version)
        now = self.clock.time()
        v = verdict(
            w,
            version,
            mine,
            started_at=rev.started_at if rev else rec.applied_at,
            now=now,
            promoted=rev.promoted if rev else True,
            rolling=rev is not None and rev.state == "rolling",
            since=rev.since if rev else 0.0,
        )
        return {
            "app": rec.app.name,
            "workload": w.name,
            "type": w.type,
            "version": version,
            "state": rev.state if rev else "stable",
            "message": rev.message if rev else "",
            "ready": v.ready,
            "desired": v.desired,
            "old": v.old,
            "waiting_promotion": v.waiting_promotion,
            "stop_first": stop_first(w),
            "update": to_data(w.update),
            "history": [
                {
                    "version": r.version,
                    "cause": r.cause,
                    "state": r.state,
                    "message": r.message,
                    "created_at": r.created_at,
                    "finished_at": r.finished_at,
                    "reverted_to": r.reverted_to,
                    "current": r.version == version and r is rev,
                    "command": list(r.workload.command),
                    "image": r.workload.image,
                }
                for r in history
            ],
        }

    async def settlement(
        self, name: str, index: int, wait: float, from_generation: int = 0
    ) -> tuple[int, Settlement]:
        """Where application ``name`` stands (``elastin.model.settled``); blocks up to
        ``wait`` s for a change past ``index`` (the index of an earlier answer), and no
        longer than until an instance outlives ``min_healthy_time`` (no write marks that
        moment). ``from_generation``: the generation the wait started from (see
        ``settlement``)."""
        rev = self.changes.mesh.value
        rec, allocs = await self._app_and_allocs(name)
        s = self._settlement(rec, allocs, from_generation)
        if wait <= 0 or not index or s.done:
            return rev, s  # nothing to wait for (a settled answer is news: time moved it)
        now = self.clock.time()
        due = [
            t
            for w in rec.app.workloads
            if (t := next_ready_due(w, [a for a in allocs if a.app == name], now))
        ]
        if due:  # no write marks the moment an instance has been ready long enough
            wait = min(wait, max(0.0, min(due) - now) + 0.05)
        rev = await self.changes.mesh.wait_past(index, wait)
        rec, allocs = await self._app_and_allocs(name)
        return rev, self._settlement(rec, allocs, from_generation)

    def _settlement(
        self, rec: AppRecord, allocs: list[Allocation], from_generation: int
    ) -> Settlement:
        return settlement(
            rec.app,
            rec.stopped,
            allocs,
            versions=rec.versions,
            history=rec.history,
            now=self.clock.time(),
            from_generation=from_generation,
        )

    async def _app_and_allocs(self, name: str) -> tuple[AppRecord, list[Allocation]]:
        found = await self.repo.get_app(name)
        if found is None:
            raise NotFound(f"no application named {name!r}", hint="see `elastin ps`")
        allocs, _ = await self.repo.list_allocs()
        return found[0], allocs
