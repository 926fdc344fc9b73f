"""The Python SDK: ``AutomationEngine`` (tasks), ``ContainerEngine`` (containers) and
``VirtualizationEngine`` (virtual machines)::

    from elastin import AutomationEngine
    engine = AutomationEngine()
    task = engine.create_task(command='ls -l', resources={'cpu': 1, 'memory': 128})
    engine.start_task(task)
    print(engine.get_task_resources(task))   # allocated resources and measured usage

Each ``create_*`` call describes a workload (nothing runs yet); ``start_*`` applies it to the
server as a one-workload application named ``sdk-<name>``, through the same validation as a
spec file, and waits on the server's blocking settlement query (``elastin.model.settled``)
until it runs (a service: its instances run, healthy where checked) or, for a job, finished.
When it cannot — every instance pending with a reason ("no node has 1 cpu free"), failed, or
not there within ``wait`` seconds — ``start_*`` deletes what it applied (nothing stays queued)
and raises ``EngineError`` naming the reason. ``get_*_resources`` reports what it asked for,
what is allocated (instances placed on a node and not finished), the totals of the accounting
formulas (request × instances), and what each instance measurably uses. Numbers without a unit
are MiB for memory and disk, and cores for cpu.

The engine deletes the applications it started when it is closed — ``close()``, the end of a
``with`` block, or the interpreter's exit — unless it was made with ``keep=True``. It talks to
a running server (found like the CLI finds it), or starts one in the background (server and
agent in one process, as ``elastin up --detach`` does, through ``elastin.client.local``) and
stops it, with the instances it ran, at interpreter exit.
"""

from __future__ import annotations

import atexit
import os
import re
import secrets
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, Self

import yaml

from elastin.client.discovery import default_data_dir
from elastin.client.errors import ClientError, ServerUnavailable
from elastin.client.http import Client
from elastin.client.local import start_daemon, stop_daemon
from elastin.clock import SYSTEM, Clock
from elastin.model.cluster import Allocation
from elastin.model.errors import SpecError
from elastin.model.resources import Resources
from elastin.model.spec import parse_spec
from elastin.model.units import MIB, format_cpu, format_size

SETTLE_WAIT = 2.0  # longest blocking query while ``start_*`` waits
SERVICE_WAIT = 60.0  # how long ``start_*`` waits for a service's instances by default
LOG_LINES = 5  # lines of a failed instance's output an error quotes


class EngineError(Exception):
    """Raised by the SDK with a message and a hint for people."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message + (f" (hint: {hint})" if hint else ""))
        self.message = message
        self.hint = hint


@dataclass
class Workload:
    """A workload created by an engine: a task, a container or a virtual machine."""

    name: str
    kind: str
    spec: dict[str, Any]
    job: bool
    started: bool = False
    app: str = field(init=False)

    def __post_init__(self) -> None:
        self.app = f"sdk-{self.name}"

    @property
    def section(self) -> str:
        return "jobs" if self.job else "services"

    @property
    def what(self) -> str:
        """How errors name it: ``task 'lister'``."""
        return f"{'virtual machine' if self.kind == 'vm' else self.kind} {self.name!r}"


Task = Workload
Container = Workload
VirtualMachine = Workload

_NAME = re.compile(r"[^a-z0-9-]+")


def _name(prefix: str, name: str | None) -> str:
    if name:
        return name
    return f"{prefix}-{secrets.token_hex(3)}"


def _resources(resources: Mapping[str, Any] | None) -> dict[str, Any]:
    res = dict(resources or {"cpu": "100m", "memory": 64})
    res.setdefault("cpu", "100m")
    res.setdefault("memory", 64)
    return res


def _amounts(r: Resources) -> dict[str, Any]:
    return {
        "cpu": r.cpu / 1000,
        "memory_mib": r.memory / MIB,
        "disk_mib": r.disk / MIB,
        "human": f"cpu {format_cpu(r.cpu)}, memory {format_size(r.memory)}",
    }


def _allocated(allocs: Sequence[Allocation]) -> Resources:
    """What ``allocs`` hold now: those placed on a node and not finished."""
    total = Resources(0, 0, 0)
    for a in allocs:
        if a.node_id and not a.terminal:
            total = total + a.resources
    return total


def _reasons(allocs: Sequence[Allocation], statuses: tuple[str, ...]) -> list[str]:
    """The distinct reasons of the allocations in ``statuses``, newest first."""
    out: list[str] = []
    for a in sorted(allocs, key=lambda a: a.updated_at, reverse=True):
        if a.status not in statuses:
            continue
        reason = a.reason or (
            f"exited with code {a.exit_code}" if a.exit_code is not None else a.status
        )
        if reason not in out:
            out.append(reason)
    return out


class _Engine:
    kind = "task"
    clock: Clock = SYSTEM

    def __init__(
        self, url: str | None = None, token: str | None = None, *, keep: bool = False
    ) -> None:
        self.keep = keep
        self._started: dict[str, Workload] = {}  # application -> what this engine started
        self._closed = False
        if url and token:
            self._client = Client(url, token)
        else:
            self._client = self._connect()
        # after _connect's stop_daemon: atexit runs last in first, so this comes first
        atexit.register(self._close_at_exit)

    # server ---------------------------------------------------------------------------
    def _connect(self) -> Client:
        """The server found here, or one started in the background (``elastin daemon``)
        that stops, with the instances it ran, when the interpreter exits."""
        try:
            return Client.discover()
        except ServerUnavailable:
            pass
        data_dir = default_data_dir()
        try:
            proc = start_daemon(
                data_dir, port=0, log_path=data_dir / "sdk-server.log", stop_workloads=True
            )
            atexit.register(stop_daemon, proc)
            return Client.discover()
        except ClientError as e:
            raise EngineError(e.message, e.hint) from None

    def close(self) -> None:
        """Delete the applications this engine started (unless it keeps them: ``keep=True``)
        and close its connection. Raises ``EngineError`` naming those it could not delete."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._close_at_exit)
        failed: list[str] = []
        try:
            if not self.keep:
                for app, w in list(self._started.items()):
                    try:
                        self._client.delete_app(app)
                        w.started = False
                    except ClientError as e:
                        failed.append(f"{app}: {e.message}")
                self._started.clear()
        finally:
            self._client.close()
        if failed:
            raise EngineError(
                "could not delete what the engine started: " + "; ".join(failed),
                "delete them with `elastin down APP` once the server answers",
            )

    def _close_at_exit(self) -> None:
        try:
            self.close()
        except EngineError as e:  # no traceback at exit: one line
            print(f"elastin: {e}", file=sys.stderr)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # common ---------------------------------------------------------------------------
    def _create(self, prefix: str, name: str | None, spec: dict[str, Any], job: bool) -> Workload:
        n = _name(prefix, name)
        spec = {"kind": self.kind, **spec}
        w = Workload(n, self.kind, spec, job)
        self._check(w)
        return w

    def _text(self, w: Workload) -> str:
        return yaml.safe_dump({"app": w.app, w.section: {w.name: w.spec}}, sort_keys=False)

    def _check(self, w: Workload) -> None:
        try:
            parse_spec(self._text(w), file=f"<{w.kind} {w.name}>", base_dir=os.getcwd())
        except SpecError as e:
            raise EngineError(e.render(), "fix the arguments of the create call") from None

    def _start(self, w: Workload, wait: float | None) -> Workload:
        """Apply ``w``; unless ``wait`` is 0, wait until it runs (a job: finished) or raise
        ``EngineError`` with the reason, once what was applied is deleted again."""
        if self._closed:
            raise EngineError("the engine is closed", "make a new engine")
        try:
            self._client.apply(self._text(w), file=f"<{w.kind} {w.name}>", base_dir=os.getcwd())
        except ClientError as e:
            raise EngineError(e.message, e.hint) from None
        w.started = True
        self._started[w.app] = w
        if wait == 0:
            return w
        limit = wait if wait is not None else (None if w.job else SERVICE_WAIT)
        deadline = None if limit is None else self.clock.monotonic() + limit
        index = 0
        while True:
            remaining = SETTLE_WAIT if deadline is None else deadline - self.clock.monotonic()
            if remaining <= 0:
                verb = "finish" if w.job else "run"
                self._give_up(w, f"did not {verb} within {limit:g} s", ("pending", "failed"))
            try:
                s = self._client.settlement(w.app, index=index, wait=min(remaining, SETTLE_WAIT))
            except ClientError as e:
                raise EngineError(e.message, e.hint) from None
            if s["state"] == "settled":
                return w
            if s["state"] == "failed":
                self._give_up(w, "failed", ("failed",))
            if s["waiting"]:
                self._give_up(w, "cannot start", ("pending",))
            index = s["index"]

    def _give_up(self, w: Workload, what: str, statuses: tuple[str, ...]) -> NoReturn:
        """Delete ``w``'s application and raise an ``EngineError``: what went wrong, the
        reasons of its allocations in ``statuses`` and a failed instance's last output."""
        reasons: list[str] = []
        output = ""
        try:
            allocs = self._client.allocations(app=w.app, all=True)
            reasons = _reasons(allocs, statuses)
            failed = [a for a in allocs if a.status == "failed"]
            if failed:
                last = max(failed, key=lambda a: a.updated_at)
                output = self._tail(last.id)
        except ClientError:
            pass
        try:
            self._stop(w)
            hint = "nothing of it was left running or queued"
        except EngineError as e:
            hint = f"it could not be deleted ({e.message}): `elastin down {w.app}` stops it"
        message = f"{w.what} {what}" + (f": {'; '.join(reasons)}" if reasons else "")
        if output:
            message += "\n  its last output:\n    " + "\n    ".join(output.splitlines())
        if "cpu" in message or "memory" in message or "no node" in message:
            hint = "ask for less (resources=...) or add a node; " + hint
        raise EngineError(message, hint)

    def _tail(self, alloc_id: str) -> str:
        """The last lines an instance wrote (stderr, else stdout); "" when there are none."""
        for stream in ("stderr", "stdout"):
            data = b"".join(self._client.logs(alloc_id, stream=stream, tail=LOG_LINES))
            text = data.decode(errors="replace").strip()
            if text:
                return "\n".join(text.splitlines()[-LOG_LINES:])
        return ""

    def _stop(self, w: Workload) -> None:
        try:
            self._client.delete_app(w.app)
        except ClientError as e:
            raise EngineError(e.message, e.hint) from None
        w.started = False
        self._started.pop(w.app, None)

    def _resources(self, w: Workload) -> dict[str, Any]:
        """What the workload asked for, what is allocated to it now, its totals, and each
        instance's measured use."""
        app = parse_spec(self._text(w), base_dir=os.getcwd())
        wl = app.workloads[0]
        allocs = self._client.allocations(app=w.app, all=True) if w.started else []
        instances: list[dict[str, Any]] = []
        for a in allocs:
            instances.append(
                {
                    "id": a.id,
                    "index": a.index,
                    "status": a.status,
                    "reason": a.reason,
                    "node": a.node_id,
                    "exit_code": a.exit_code,
                    "usage": {
                        "cpu": a.usage.cpu / 1000,
                        "memory_mib": round(a.usage.memory / MIB, 2),
                    },
                }
            )
        live = [i for i in instances if i["status"] in ("running", "starting")]
        total = wl.total()
        return {
            "name": w.name,
            "kind": w.kind,
            "requested": _amounts(wl.resources),
            "allocated": _amounts(_allocated(allocs)),
            "instances": wl.instances,
            "total": {k: v for k, v in _amounts(total).items() if k != "human"},
            "measured": {
                "cpu": round(sum(i["usage"]["cpu"] for i in live), 3),
                "memory_mib": round(sum(i["usage"]["memory_mib"] for i in live), 2),
            },
            "allocations": instances,
        }


def _command(command: str | Sequence[str]) -> str | list[str]:
    return command if isinstance(command, str) else list(command)


class AutomationEngine(_Engine):
    """Tasks: processes in their own cgroups. By default a task runs to completion (a job);
    ``service=True`` keeps it running with ``replicas`` instances."""

    kind = "task"

    def create_task(
        self,
        command: str | Sequence[str],
        resources: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        workdir: str | None = None,
        service: bool = False,
        replicas: int = 1,
        parallelism: int = 1,
        priority: int = 50,
    ) -> Task:
        spec: dict[str, Any] = {
            "command": _command(command),
            "resources": _resources(resources),
            "priority": priority,
        }
        if env:
            spec["env"] = dict(env)
        spec["workdir"] = workdir or os.getcwd()  # like running it here, in a shell
        if service:
            spec["replicas"] = replicas
        else:
            spec["parallelism"] = parallelism
            spec["completions"] = parallelism
        return self._create("task", name, spec, job=not service)

    def start_task(self, task: Task, wait: float | None = None) -> Task:
        """Run ``task`` and wait until it runs (a service) or finished (a job); ``wait``:
        at most that many seconds (default: a job until it finishes, a service 60 s; 0:
        apply and return). Raises ``EngineError`` with the reason when it cannot."""
        return self._start(task, wait)

    def stop_task(self, task: Task) -> None:
        self._stop(task)

    def get_task_resources(self, task: Task) -> dict[str, Any]:
        return self._resources(task)

    def get_task_logs(self, task: Task, stream: str = "stdout") -> str:
        out = []
        for a in self._client.allocations(app=task.app, all=True):
            out.append(b"".join(self._client.logs(a.id, stream=stream, tail=0)).decode())
        return "".join(out)


class ContainerEngine(_Engine):
    """Containers: OCI images run by runc (the container driver lands in a later release;
    until a node has it, started containers stay pending with that reason)."""

    kind = "container"

    def create_container(
        self,
        image: str,
        command: str | Sequence[str] | None = None,
        resources: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        replicas: int = 1,
        env: Mapping[str, str] | None = None,
        priority: int = 50,
    ) -> Container:
        spec: dict[str, Any] = {
            "image": image,
            "resources": _resources(resources),
            "replicas": replicas,
            "priority": priority,
        }
        if command:
            spec["command"] = _command(command)
        if env:
            spec["env"] = dict(env)
        return self._create("container", name, spec, job=False)

    def start_container(self, container: Container, wait: float | None = None) -> Container:
        """Run ``container`` and wait until its instances run (see ``start_task``)."""
        return self._start(container, wait)

    def stop_container(self, container: Container) -> None:
        self._stop(container)

    def get_container_resources(self, container: Container) -> dict[str, Any]:
        return self._resources(container)


class VirtualizationEngine(_Engine):
    """Virtual machines run by QEMU (the vm driver lands in a later release; until a node has
    it, started VMs stay pending with that reason)."""

    kind = "vm"

    def create_vm(
        self,
        image: str,
        resources: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        count: int = 1,
        priority: int = 50,
    ) -> VirtualMachine:
        spec: dict[str, Any] = {
            "image": image,
            "resources": _resources(resources),
            "replicas": count,
            "priority": priority,
        }
        return self._create("vm", name, spec, job=False)

    def start_vm(self, vm: VirtualMachine, wait: float | None = None) -> VirtualMachine:
        """Run ``vm`` and wait until its instances run (see ``start_task``)."""
        return self._start(vm, wait)

    def stop_vm(self, vm: VirtualMachine) -> None:
        self._stop(vm)

    def get_vm_resources(self, vm: VirtualMachine) -> dict[str, Any]:
        return self._resources(vm)
