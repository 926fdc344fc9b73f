"""The application record's versions: numbers that never repeat, the history kept, how the
applier notes a rollout's end (``rollout_step``: stable, failed, rolled back) and what the
apply diff says about replacing instances."""

from __future__ import annotations

from dataclasses import replace

from elastin.model.cluster import Allocation
from elastin.model.codec import from_data, to_data
from elastin.model.rollout import HISTORY_KEPT, Revision
from elastin.model.workload import (
    Application,
    Autoscale,
    HealthCheck,
    Port,
    UpdatePolicy,
    Workload,
)
from elastin.server.applier import rollout_step
from elastin.server.apps import diff_apps, next_record, replacement
from elastin.server.repo import AppRecord

NOW = 1000.0
WEB = Workload("web", replicas=2, command=("web",), health=HealthCheck("tcp", port="http"))


def app(w: Workload = WEB) -> Application:
    return Application("shop", (w,))


def test_versions_never_repeat_even_for_a_recreated_application() -> None:
    first = next_record(None, app(), "", 0.0)
    assert first.versions == {"web": 1} and first.history["web"][0].state == "rolling"
    again = next_record(None, app(), "", 1.0, floors={"web": 4})  # allocations ran up to 4
    assert again.versions == {"web": 5}
    changed = next_record(again, app(replace(WEB, command=("web2",))), "", 2.0)
    assert changed.versions == {"web": 6}
    assert [r.version for r in changed.history["web"]] == [5, 6]
    assert changed.history["web"][0].state == "superseded"  # newer came before it was proven
    scaled = next_record(changed, app(replace(WEB, command=("web2",), replicas=5)), "", 3.0)
    assert scaled.versions == {"web": 6} and len(scaled.history["web"]) == 2


def test_history_is_bounded() -> None:
    rec = next_record(None, app(), "", 0.0)
    for i in range(HISTORY_KEPT + 5):
        rec = next_record(rec, app(replace(WEB, command=(f"v{i}",))), "", float(i))
    assert len(rec.history["web"]) == HISTORY_KEPT


def running(version: int, index: int, **kw: object) -> Allocation:
    return Allocation(
        f"w{version}-{index}",
        "shop",
        "web",
        index,
        spec_version=version,
        status="running",
        healthy=True,
        ready_at=NOW - 60,
        **kw,  # type: ignore[arg-type]
    )


def two_versions() -> tuple[AppRecord, list[Allocation]]:
    rec = next_record(None, app(), "", 0.0)
    rec = replace(rec, history={"web": (replace(rec.history["web"][0], state="stable"),)})
    rec = next_record(rec, app(replace(WEB, command=("broken",))), "", NOW - 10)
    return rec, [running(1, 0), running(1, 1)]


def test_a_complete_rollout_is_marked_stable() -> None:
    rec = next_record(None, app(), "", NOW - 100)
    step = rollout_step(rec, [running(1, 0), running(1, 1)], NOW)
    assert step is not None
    new, events = step
    assert new.history["web"][-1].state == "stable"
    assert events[0][0] == "rollout.complete"
    assert rollout_step(new, [running(1, 0), running(1, 1)], NOW) is None  # nothing more


def test_a_failed_version_is_rolled_back_to_the_last_stable_one() -> None:
    rec, old = two_versions()
    failed = Allocation(
        "w2-0", "shop", "web", 0, spec_version=2, status="failed", reason="no", updated_at=NOW
    )
    step = rollout_step(rec, [*old, failed], NOW)
    assert step is not None
    new, events = step
    assert new.versions == {"web": 1} and new.app.workloads[0].command == ("web",)
    last = new.history["web"][-1]
    assert (last.version, last.state, last.reverted_to) == (2, "failed", 1)
    assert events[0][0] == "rollout.failed" and "rolled back to version 1" in events[0][2]


def test_without_auto_revert_or_a_proven_version_nothing_is_rolled_back() -> None:
    w = replace(WEB, update=UpdatePolicy(auto_revert=False))
    rec = next_record(None, app(w), "", 0.0)
    failed = Allocation("x", "shop", "web", 0, spec_version=1, status="failed", updated_at=1.0)
    step = rollout_step(rec, [failed], NOW)
    assert step is not None
    new, events = step
    assert new.versions == {"web": 1} and new.history["web"][-1].state == "failed"
    assert "not rolled back (auto_revert is off)" in events[0][2]


def test_the_diff_says_how_instances_are_replaced() -> None:
    assert replacement(WEB) == (
        "spec changed: rolling update (surge 1, unavailable 0; rolled back if not healthy "
        "within 300s)"
    )
    fixed = replace(WEB, ports=(Port("http", 8080),))
    assert replacement(fixed) == (
        "spec changed: replaced stop-first, one at a time (fixed port 8080)"
    )
    assert replacement(Workload("report", "job")) == "spec changed: a new run"


def test_revision_records_the_spec() -> None:
    r = Revision(3, WEB, 1.0)
    assert r.workload.command == ("web",) and r.cause == "apply"


def test_a_record_stored_before_an_upgrade_keeps_its_versions() -> None:
    """A field added to the spec (with its default) changes the hash of every workload: the
    record stored by the earlier release holds the old hash. Applying the same spec again
    after the upgrade must not start a new version (it would roll every service)."""
    rec = next_record(None, app(), "", 0.0)
    # the earlier release stored a hash per workload (ignored now, as any unknown field is)
    stored = from_data(AppRecord, {**to_data(rec), "fingerprints": {"web": "0123456789abcdef"}})
    again = next_record(stored, app(), "", 1.0)
    assert again.versions == {"web": 1}
    assert len(again.history["web"]) == 1


def test_a_mesh_or_autoscale_change_needs_no_new_instances() -> None:
    rec = next_record(None, app(), "", 0.0)
    retried = replace(WEB, mesh=replace(WEB.mesh, retries=5, max_request_headers=50))
    again = next_record(rec, app(retried), "", 1.0)
    assert again.versions == {"web": 1}
    assert again.app.workload("web") == retried  # kept: the mesh is built from it
    [change] = diff_apps(rec, app(retried))
    assert (change.change, change.detail) == (
        "configure",
        "mesh policy changed: the proxies take it: no new instances",
    )
    scaled = replace(WEB, autoscale=Autoscale(min=1, max=4))
    [change] = diff_apps(rec, app(scaled))
    assert (change.change, change.detail) == (
        "configure",
        "autoscale policy changed: no new instances",
    )
    assert next_record(rec, app(scaled), "", 1.0).versions == {"web": 1}


def test_going_back_to_a_version_keeps_the_current_mesh_and_autoscale_policy() -> None:
    """A mesh or autoscale change makes no version: the revisions keep the policy of their
    time. Going back (auto-revert, `rollout undo`) runs an old version's instances, not its
    policy: the operator's rate limit or bounds stay as applied since."""
    rec = next_record(None, app(), "", 0.0)
    limited = replace(WEB, mesh=replace(WEB.mesh, rate_limit=50), autoscale=Autoscale(1, 4))
    rec = next_record(rec, app(limited), "", 1.0)
    rec = next_record(rec, app(replace(limited, command=("web2",))), "", 2.0)
    assert rec.versions == {"web": 2}
    first = rec.history["web"][0]
    back = rec.with_version(first.workload, first.version, rec.history["web"])
    w = back.app.workload("web")
    assert w is not None and w.command == ("web",)
    assert (w.mesh.rate_limit, w.autoscale) == (50, Autoscale(1, 4))


def test_the_diff_says_every_kind_of_change_a_workload_holds() -> None:
    rec = next_record(None, app(), "", 0.0)
    both = replace(WEB, replicas=3, mesh=replace(WEB.mesh, retries=5))
    [change] = diff_apps(rec, app(both))
    assert (change.change, change.detail) == (
        "scale",
        "replicas 2 -> 3; mesh policy changed: the proxies take it",
    )
