"""One scheduling pass: reconcile -> feasible -> rank -> select -> ``Plan``; preemption.

``schedule`` reconciles every application (and stops the allocations of deleted ones);
``reconcile`` does the same for one application. Both are pure: the snapshot, the options,
a seeded ``random.Random`` and an id factory go in, a ``Plan`` comes out.

The pass, in order:

1. ``reconcile.diff_app`` lists, per application, what must stop and which instances need a
   node. Stops release their resources for the rest of the pass (the applier commits them in
   the same transaction as the placements).
2. Per node the free resources are computed once: capacity minus the requests of every
   allocation that is placed, not terminal, ``desired="run"`` and not stopped by this plan.
3. Requests are placed highest priority first (so a lower-priority placement of this pass
   can never take the room a higher one needed).
   *Feasible*: the node is ready, has the workload's kind among its drivers, satisfies every
   constraint (``==``, ``!=``, ``in``, ``not_in`` over ``Node.attrs()``), and the request fits
   its free resources (placements earlier in the pass included).
   *Sampling*: the node list is shuffled once per pass with the seeded rng and a cursor walks
   it round-robin across placements; a placement stops after ``limit`` feasible candidates
   (``max(2, ceil(log2 nodes))`` by default, Nomad-style power-of-k choices), so a placement
   costs O(limit) on a cluster with room, not O(nodes). Only when nothing is found is the
   whole list scanned; that outcome is cached per (kind, constraints, request) for the pass,
   and later identical requests only re-check the nodes that gained room since.
   *Ranking*: ``binpack`` scores a node ``20 - 10**cpu_free - 10**mem_free`` after the
   placement (free fractions; Nomad's fitness), ``spread`` the reverse
   (``10**cpu_free + 10**mem_free - 2``). Both subtract ``ANTI_AFFINITY`` per instance of the
   same workload already on the node. Highest score wins; ties keep the first seen.
4. Preemption (``options.preemption``): when no node fits, the nodes are sampled again for
   one where evicting live allocations of priority ``<= priority - preemption_gap`` (10, as
   in Nomad) makes room. On a node the victims are chosen lowest priority first (largest
   first within a priority, so the set stays small), then any victim whose release is not
   needed is put back. Among up to ``limit`` sampled nodes the set with the lowest
   highest-priority, then the fewest victims, then the least resources wins (a node that can
   at best tie on priority and count with a single-victim set already found is not
   examined). Allocations placed in this same pass are never victims. Allocations of equal,
   higher or near priority are never evicted.
5. A preempted instance of an application reconciled in this pass gets a replacement
   request (same index) queued at its own priority in the same pass. Requests that still fit
   nowhere are retried while preemptions leave room (a bounded number of rounds), then become
   pending allocations; their reason is computed at the end of the pass from the
   final free resources (so reconciling the committed plan again yields an empty plan).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Sequence
from dataclasses import replace

from elastin.model.cluster import Allocation, Node
from elastin.model.units import format_cpu, format_size
from elastin.model.workload import Constraint, Port
from elastin.scheduler.plan import Lost, Plan, Preemption, SchedulerOptions
from elastin.scheduler.reconcile import Request, diff_app
from elastin.scheduler.state import ClusterState

ANTI_AFFINITY = 5.0
"""Score subtracted per instance of the same workload already on a node (scores span 0-18)."""

_NO_VICTIM = 1 << 62
_ROUNDS = 8  # bound on re-placement rounds after preemptions

Sig = tuple[str, tuple[Constraint, ...]]
Key = tuple[Sig, int, int, int, frozenset[int]]


def schedule(
    state: ClusterState,
    options: SchedulerOptions,
    rng: random.Random,
    new_id: Callable[[], str],
) -> Plan:
    """Plan every application of ``state`` (and stop allocations of deleted ones)."""
    names = sorted(set(state.apps) | set(state.allocs_by_app))
    return _Pass(state, options, rng, new_id).run(names)


def reconcile(
    state: ClusterState,
    app_name: str,
    options: SchedulerOptions | None = None,
    rng: random.Random | None = None,
    new_id: Callable[[], str] | None = None,
) -> Plan:
    """Plan one application (stop all of its allocations if it no longer exists).

    Without ``rng`` a ``random.Random(0)`` is used; without ``new_id`` ids are drawn from it.
    """
    rng = rng if rng is not None else random.Random(0)
    if new_id is None:
        draw = rng

        def new_id() -> str:
            return f"{draw.getrandbits(64):016x}"

    return _Pass(state, options or SchedulerOptions(), rng, new_id).run([app_name])


def constraint_ok(c: Constraint, attrs: dict[str, str]) -> bool:
    """Whether node attributes ``attrs`` satisfy constraint ``c``."""
    have = attrs.get(c.attribute)
    values = (c.value,) if isinstance(c.value, str) else c.value
    if c.op == "==":
        return have == values[0] if values else have == ""
    if c.op == "!=":
        return have != (values[0] if values else "")
    if c.op == "in":
        return have in values
    return have not in values


def describe_constraint(c: Constraint) -> str:
    value = c.value if isinstance(c.value, str) else "[" + ", ".join(c.value) + "]"
    return f"{c.attribute} {c.op} {value}"


def static_ports(ports: Sequence[Port]) -> frozenset[int]:
    """The fixed port numbers a workload listens on (0 means "any free port")."""
    return frozenset(p.port for p in ports if p.port)


def new_allocation(
    alloc_id: str, req: Request, *, node_id: str = "", reason: str = ""
) -> Allocation:
    """A new allocation for ``req``: placed on ``node_id``, or pending with ``reason``."""
    w = req.workload
    return Allocation(
        id=alloc_id,
        app=req.app,
        workload=w.name,
        index=req.index,
        type=w.type,
        kind=w.kind,
        node_id=node_id,
        resources=w.resources,
        priority=w.priority,
        spec_version=req.version,
        reason=reason,
        attempt=req.attempt,
    )


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


class _Pass:
    """The mutable working set of one pass; discarded when the plan is returned."""

    def __init__(
        self,
        state: ClusterState,
        options: SchedulerOptions,
        rng: random.Random,
        new_id: Callable[[], str],
    ) -> None:
        self.state = state
        self.options = options
        self.rng = rng
        self.new_id = new_id
        self.plan = Plan(base_rev=state.revision)
        nodes: list[Node] = sorted(state.nodes.values(), key=lambda n: n.id)
        self.nodes = nodes
        self.index = {n.id: i for i, n in enumerate(nodes)}
        self.limit = options.candidate_limit(len(nodes))
        self.spread = options.algorithm == "spread"
        self.stopped: set[str] = set()
        self.static: dict[Sig, bytearray] = {}
        self.port_cache: dict[tuple[str, str], frozenset[int]] = {}
        self.ports: list[set[int]] = []
        self.attrs: list[dict[str, str] | None] = [None] * len(nodes)
        self.infeasible: dict[Key, int] = {}  # -> position in self.freed when it failed
        self.no_preempt: set[tuple[Key, int]] = set()
        self.freed: list[int] = []  # nodes whose free resources grew (preemption)
        self.preempted_any = False
        self.queue: list[tuple[int, int, Request]] = []  # (-priority, sequence, request)
        self.seq = 0
        self.names: set[str] = set()
        order = list(range(len(nodes)))
        rng.shuffle(order)
        self.order = order
        self.cursor = 0
        self.pcursor = 0

    # setup ----------------------------------------------------------------------------
    def _load(self) -> None:
        """Free resources, per-workload counts and preemption victims, per node."""
        nodes = self.nodes
        fc = [n.capacity.cpu for n in nodes]
        fm = [n.capacity.memory for n in nodes]
        fd = [n.capacity.disk for n in nodes]
        self.inv_c = [1.0 / c if c > 0 else 0.0 for c in fc]
        self.inv_m = [1.0 / m if m > 0 else 0.0 for m in fm]
        victims: list[list[Allocation]] = [[] for _ in nodes]
        counts: dict[tuple[str, str], dict[int, int]] = {}
        index = self.index
        stopped = self.stopped
        for a in self.state.allocations.values():
            if not a.node_id or a.desired != "run" or a.terminal or a.id in stopped:
                continue
            i = index.get(a.node_id)
            if i is None:
                continue
            r = a.resources
            fc[i] -= r.cpu
            fm[i] -= r.memory
            fd[i] -= r.disk
            victims[i].append(a)
            c = counts.setdefault((a.app, a.workload), {})
            c[i] = c.get(i, 0) + 1
        self.fc, self.fm, self.fd = fc, fm, fd
        # static ports in use per node: two instances cannot listen on one port
        ports: list[set[int]] = [set() for _ in nodes]
        for i, vs in enumerate(victims):
            for a in vs:
                sp = self._app_ports(a.app, a.workload)
                if sp:
                    ports[i] |= sp
        self.ports = ports
        self.victims = victims
        self.vmin = [min((a.priority for a in v), default=_NO_VICTIM) for v in victims]
        self.counts = counts

    def _app_ports(self, app: str, workload: str) -> frozenset[int]:
        """The static ports the current spec of ``app/workload`` listens on (cached)."""
        key = (app, workload)
        found = self.port_cache.get(key)
        if found is None:
            entry = self.state.apps.get(app)
            w = entry[0].workload(workload) if entry else None
            found = static_ports(w.ports) if w else frozenset()
            self.port_cache[key] = found
        return found

    def _static_row(self, sig: Sig) -> bytearray:
        row = self.static.get(sig)
        if row is None:
            row = bytearray(len(self.nodes))  # 0 unknown, 1 feasible, 2 not
            self.static[sig] = row
        return row

    def _static_ok(self, sig: Sig, i: int) -> bool:
        node = self.nodes[i]
        kind, constraints = sig
        if node.status != "ready" or kind not in node.drivers:
            return False
        if constraints:
            attrs = self.attrs[i]
            if attrs is None:
                attrs = self.attrs[i] = node.attrs()
            return all(constraint_ok(c, attrs) for c in constraints)
        return True

    # the pass -------------------------------------------------------------------------
    def run(self, names: Sequence[str]) -> Plan:
        state = self.state
        requests: list[Request] = []
        for name in names:
            d = diff_app(
                name,
                state.apps.get(name),
                state.allocs_by_app.get(name, ()),
                state.nodes,
                now=state.now,
                held=state.held,
                since=state.since,
            )
            self.plan.stop.extend(d.stops)
            self.plan.lost.extend(Lost(i, reason) for i, reason in d.lost)
            requests.extend(d.requests)
        self.stopped.update(self.plan.released())
        if not requests:
            return self.plan
        self._load()
        self.names = set(names)
        self.queue = [(-r.workload.priority, n, r) for n, r in enumerate(requests)]
        self.seq = len(requests)
        heapq.heapify(self.queue)
        waiting = self._drain()
        for _ in range(_ROUNDS):
            if not (waiting and self.preempted_any):
                break
            # a preemption left room that an earlier request may use now
            self.preempted_any = False
            self.queue = [(-r.workload.priority, n, r) for n, r in enumerate(waiting)]
            heapq.heapify(self.queue)
            waiting = self._drain()
        self._finish_pending(waiting)
        return self.plan

    def _drain(self) -> list[Request]:
        """Place queued requests, highest priority first; return those that fit nowhere."""
        waiting: list[Request] = []
        preemption = self.options.preemption
        queue = self.queue
        pop = heapq.heappop
        while queue:
            req = pop(queue)[2]
            i = self._select(req)
            if i >= 0:
                self._commit(req, i, None)
            elif not (preemption and self._preempt(req)):
                waiting.append(req)
        return waiting

    def _commit(self, req: Request, i: int, alloc_id: str | None) -> str:
        w = req.workload
        r = w.resources
        self.fc[i] -= r.cpu
        self.fm[i] -= r.memory
        self.fd[i] -= r.disk
        c = self.counts.get((req.app, w.name))
        if c is None:
            c = self.counts[(req.app, w.name)] = {}
        c[i] = c.get(i, 0) + 1
        want = static_ports(w.ports)
        if want:
            self.ports[i] |= want
        node_id = self.nodes[i].id
        if req.existing is not None:
            self.plan.update.append(replace(req.existing, node_id=node_id, reason=""))
            return req.existing.id
        alloc_id = alloc_id or self.new_id()
        self.plan.place.append(new_allocation(alloc_id, req, node_id=node_id))
        return alloc_id

    def _select(self, req: Request) -> int:
        """The best of up to ``limit`` feasible nodes, or -1 when none fits."""
        w = req.workload
        r = w.resources
        cpu, mem, disk = r.cpu, r.memory, r.disk
        sig: Sig = (w.kind, w.constraints)
        want = static_ports(w.ports)
        key: Key = (sig, cpu, mem, disk, want)
        ports = self.ports
        row = self._static_row(sig)
        fc, fm, fd = self.fc, self.fm, self.fd
        inv_c, inv_m = self.inv_c, self.inv_m
        counts = self.counts.get((req.app, w.name)) or {}
        spread = self.spread
        failed_at = self.infeasible.get(key)
        if failed_at is not None:
            # nodes before ``failed_at`` in ``freed`` are known not to fit this request
            candidates: Sequence[int] = self.freed[failed_at:]
            limit = len(candidates)
        else:
            candidates = self.order
            limit = self.limit
        n = len(candidates)
        pos = self.cursor if failed_at is None else 0
        best = -1
        best_score = -1e18
        found = 0
        first_fit = -1
        for step in range(n):
            i = candidates[pos]
            pos += 1
            if pos == n:
                pos = 0
            if fc[i] < cpu or fm[i] < mem or fd[i] < disk:
                continue
            if want and not want.isdisjoint(ports[i]):
                continue
            s = row[i]
            if s == 0:
                s = row[i] = 1 if self._static_ok(sig, i) else 2
            if s != 1:
                continue
            if first_fit < 0:
                first_fit = step
            fcf = (fc[i] - cpu) * inv_c[i]
            fmf = (fm[i] - mem) * inv_m[i]
            # binpack: fuller after placement is better; spread: emptier is better
            score = (10.0**fcf + 10.0**fmf - 2.0) if spread else (20.0 - 10.0**fcf - 10.0**fmf)
            if counts:
                score -= ANTI_AFFINITY * counts.get(i, 0)
            if score > best_score:
                best_score = score
                best = i
            found += 1
            if found >= limit:
                break
        if failed_at is None:
            self.cursor = pos
            if best < 0:
                self.infeasible[key] = len(self.freed)
        else:
            self.infeasible[key] = failed_at + first_fit if first_fit >= 0 else len(self.freed)
        return best

    # preemption -----------------------------------------------------------------------
    def _victims_on(
        self, i: int, cpu: int, mem: int, disk: int, max_priority: int
    ) -> list[Allocation] | None:
        """The smallest set of evictable allocations on node ``i`` that makes room."""
        need_c = cpu - self.fc[i]
        need_m = mem - self.fm[i]
        need_d = disk - self.fd[i]
        eligible = []
        r_c = r_m = r_d = 0
        lowest = self.vmin[i]
        inv_c, inv_m = self.inv_c[i], self.inv_m[i]
        single: Allocation | None = None
        single_size = 0.0
        for a in self.victims[i]:
            if a.priority <= max_priority:
                eligible.append(a)
                r = a.resources
                r_c += r.cpu
                r_m += r.memory
                r_d += r.disk
                if (
                    a.priority == lowest
                    and r.cpu >= need_c
                    and r.memory >= need_m
                    and r.disk >= need_d
                ):
                    sz = r.cpu * inv_c + r.memory * inv_m
                    if single is None or sz < single_size:
                        single, single_size = a, sz
        if single is not None:
            # one victim of the lowest priority on the node: no set can do better
            return [single]
        if r_c < need_c or r_m < need_m or r_d < need_d or not eligible:
            return None

        def size(a: Allocation) -> float:
            return a.resources.cpu * inv_c + a.resources.memory * inv_m

        eligible.sort(key=lambda a: (a.priority, -size(a)))
        chosen: list[Allocation] = []
        for a in eligible:
            if need_c <= 0 and need_m <= 0 and need_d <= 0:
                break
            r = a.resources
            if (
                (need_c > 0 and r.cpu > 0)
                or (need_m > 0 and r.memory > 0)
                or (need_d > 0 and r.disk > 0)
            ):
                chosen.append(a)
                need_c -= r.cpu
                need_m -= r.memory
                need_d -= r.disk
        if need_c > 0 or need_m > 0 or need_d > 0:
            return None
        # put back what is not needed: the highest priority first, then the smallest
        for a in sorted(chosen, key=lambda a: (-a.priority, size(a))):
            r = a.resources
            if need_c + r.cpu <= 0 and need_m + r.memory <= 0 and need_d + r.disk <= 0:
                chosen.remove(a)
                need_c += r.cpu
                need_m += r.memory
                need_d += r.disk
        return chosen

    def _preempt(self, req: Request) -> bool:
        w = req.workload
        r = w.resources
        max_priority = w.priority - self.options.preemption_gap
        sig: Sig = (w.kind, w.constraints)
        want = static_ports(w.ports)
        key: Key = (sig, r.cpu, r.memory, r.disk, want)
        if (key, w.priority) in self.no_preempt or not self.nodes:
            return False
        row = self._static_row(sig)
        vmin = self.vmin
        order = self.order
        n = len(order)
        pos = self.pcursor
        best: tuple[tuple[int, int, float], int, list[Allocation]] | None = None
        found = 0
        for _ in range(n):
            i = order[pos]
            pos += 1
            if pos == n:
                pos = 0
            s = row[i]
            if s == 0:
                s = row[i] = 1 if self._static_ok(sig, i) else 2
            if s != 1 or vmin[i] > max_priority:
                continue
            if want and not want.isdisjoint(self.ports[i]):
                continue  # (conservative: the victims' ports are not counted as freed)
            if best is not None and best[0][1] == 1 and vmin[i] >= best[0][0]:
                # at best a tie on (priority, count): keep the node found first
                found += 1
                if found >= self.limit:
                    break
                continue
            chosen = self._victims_on(i, r.cpu, r.memory, r.disk, max_priority)
            if chosen is None:
                continue
            inv_c, inv_m = self.inv_c[i], self.inv_m[i]
            rank = (
                max(a.priority for a in chosen),
                len(chosen),
                sum(a.resources.cpu * inv_c + a.resources.memory * inv_m for a in chosen),
            )
            if best is None or rank < best[0]:
                best = (rank, i, chosen)
            found += 1
            if found >= self.limit:
                break
        self.pcursor = pos
        if best is None:
            self.no_preempt.add((key, w.priority))
            return False
        _, i, chosen = best
        alloc_id = req.existing.id if req.existing is not None else self.new_id()
        name = f"{req.app}.{w.name}[{req.index}]"
        node = self.nodes[i]
        for a in chosen:
            reason = (
                f"preempted by {name} (allocation {alloc_id}, priority {w.priority}) "
                f"on node {node.name}"
            )
            self.plan.preempt.append(Preemption(a.id, alloc_id, reason))
            self.stopped.add(a.id)
            self.victims[i].remove(a)
            self.vmin[i] = min((v.priority for v in self.victims[i]), default=_NO_VICTIM)
            ar = a.resources
            self.fc[i] += ar.cpu
            self.fm[i] += ar.memory
            self.fd[i] += ar.disk
            c = self.counts.get((a.app, a.workload))
            if c and c.get(i):
                c[i] -= 1
            self._replace(a)
        self.freed.append(i)
        self.preempted_any = True
        self._commit(req, i, alloc_id)
        return True

    def _replace(self, victim: Allocation) -> None:
        """Queue a replacement for a preempted instance of an application in this pass."""
        entry = self.state.apps.get(victim.app)
        if victim.app not in self.names or entry is None:
            return
        w = entry[0].workload(victim.workload)
        if w is None or entry[1].get(w.name, 0) != victim.spec_version:
            return
        # queued at its own priority, which is below the preemptor's: it is placed before
        # any lower-priority request of this pass takes the room it could have had
        req = Request(victim.app, w, victim.index, victim.spec_version)
        heapq.heappush(self.queue, (-w.priority, self.seq, req))
        self.seq += 1

    # pending --------------------------------------------------------------------------
    def _finish_pending(self, waiting: list[Request]) -> None:
        reasons: dict[tuple[Key, int], str] = {}
        for req in waiting:
            w = req.workload
            r = w.resources
            key: Key = ((w.kind, w.constraints), r.cpu, r.memory, r.disk, static_ports(w.ports))
            reason = reasons.get((key, w.priority))
            if reason is None:
                reason = reasons[(key, w.priority)] = self._explain(req)
            if req.existing is not None:
                if req.existing.reason != reason:
                    self.plan.update.append(replace(req.existing, reason=reason))
                continue
            self.plan.place.append(new_allocation(self.new_id(), req, reason=reason))

    def _explain(self, req: Request) -> str:
        """Why ``req`` fits on no node, from the final free resources of the pass."""
        w = req.workload
        if not self.nodes:
            return "no nodes in the cluster; start an agent to add one"
        down = 0
        no_driver = 0
        failing: dict[str, int] = {}
        candidates: list[int] = []
        for i, node in enumerate(self.nodes):
            if node.status != "ready":
                down += 1
            elif w.kind not in node.drivers:
                no_driver += 1
            else:
                attrs = node.attrs()
                bad = next((c for c in w.constraints if not constraint_ok(c, attrs)), None)
                if bad is not None:
                    text = describe_constraint(bad)
                    failing[text] = failing.get(text, 0) + 1
                else:
                    candidates.append(i)
        parts: list[str] = []
        if not candidates:
            if down == len(self.nodes):
                parts.append(f"no node is ready ({_plural(down, 'node is', 'nodes are')} down)")
                down = 0
            elif no_driver == len(self.nodes) - down:
                parts.append(f"no node has the {w.kind} driver")
                no_driver = 0
            else:
                parts.append("no node satisfies the constraints")
        else:
            r = w.resources
            for dim, want, free, fmt in (
                ("cpu", r.cpu, self.fc, format_cpu),
                ("memory", r.memory, self.fm, format_size),
                ("disk", r.disk, self.fd, format_size),
            ):
                top = max(candidates, key=lambda i: free[i])
                if free[top] < want:
                    parts.append(
                        f"no node has {fmt(want)} {dim} free (largest free: "
                        f"{fmt(max(0, free[top]))} on {self.nodes[top].name})"
                    )
            fixed = static_ports(w.ports)
            if fixed and all(not fixed.isdisjoint(self.ports[i]) for i in candidates):
                shown = ", ".join(str(p) for p in sorted(fixed))
                parts.append(
                    f"port {shown} is already in use on every node (one instance per node "
                    "can listen on a fixed port; use port 0 to have the agent pick one)"
                )
            if not parts:
                parts.append(f"no node has {r.human()} free at once")
            if self.options.preemption:
                gap = self.options.preemption_gap
                parts[-1] += (
                    f", even after preempting allocations of priority <= {w.priority - gap}"
                )
        if no_driver:
            parts.append(f"{_plural(no_driver, 'node lacks', 'nodes lack')} the {w.kind!r} driver")
        if down:
            parts.append(f"{_plural(down, 'node is', 'nodes are')} down")
        for text, count in failing.items():
            parts.append(f"{_plural(count, 'node fails', 'nodes fail')} the constraint {text}")
        return "; ".join(parts)
