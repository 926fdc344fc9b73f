"""Parsing and validation of spec files (YAML) into an ``Application``.

``parse_spec(text, file, base_dir)`` and ``load_spec(path)`` return an ``Application`` or raise
``SpecError`` listing *every* problem found, each with the file, line and column, the field
path (``services.web.resources.memory``), what is wrong and a hint; unknown keys get a
did-you-mean. The YAML is composed into nodes (not loaded) so that every value keeps its
position. The format is documented field by field in docs/spec.md.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import shlex
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, get_args, get_type_hints

import yaml

from elastin.model.errors import SpecError, SpecIssue, UnitError
from elastin.model.resources import Resources
from elastin.model.units import format_cpu, format_size, parse_cpu, parse_size
from elastin.model.workload import (
    DYNAMIC_UIDS,
    KINDS,
    METRIC_KINDS,
    PROMETHEUS_NAME_RE,
    REQUEST_HEADER_BYTES_MOST,
    REQUEST_HEADERS_DEFAULT,
    REQUEST_HEADERS_MOST,
    SCALE_DOWN_DEFAULT,
    SCALE_UP_DEFAULT,
    Application,
    Autoscale,
    Behavior,
    Constraint,
    Fault,
    HealthCheck,
    LbPolicy,
    MeshPolicy,
    MetricTarget,
    PolicyType,
    Port,
    Protocol,
    RestartMode,
    RestartPolicy,
    ScalingPolicy,
    ScalingRules,
    SelectPolicy,
    UpdatePolicy,
    Vertical,
    VerticalMode,
    Workload,
)

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# a header or cookie name to hash on: it goes into haproxy.cfg, so nothing else gets through
HASH_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
USER_NAME_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
USER_ID_RE = re.compile(r"^(\d{1,10})(?::(\d{1,10}))?$")
DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")

TOP_KEYS = ("app", "services", "jobs")
# keys of one kind of workload written in the other: said so, with what to use instead
MISPLACED_IN_JOB = {
    "update": (
        "update: applies to services; jobs use retries/retry_delay",
        "remove it; a job's failed run is retried `retries` times, `retry_delay` apart "
        "(doubling each time)",
    ),
    "replicas": (
        "replicas applies to services; jobs use completions/parallelism",
        "completions: successful runs needed; parallelism: how many run at once",
    ),
    "autoscale": (
        "autoscale applies to services; a job runs `parallelism` instances at once",
        "remove it; set parallelism (how many run at once) and completions",
    ),
}
MISPLACED_IN_SERVICE = {
    "retry_delay": (
        "retry_delay applies to jobs; services use restart: {backoff: ...}",
        "e.g. restart: {backoff: 2s, max_backoff: 1m}",
    ),
}
COMMON_KEYS = (
    "kind",
    "image",
    "command",
    "args",
    "env",
    "workdir",
    "resources",
    "priority",
    "restart",
    "health",
    "ports",
    "depends_on",
    "upstreams",
    "mesh",
    "constraints",
    "stop_grace",
    "user",
)
MESH_KEYS = (
    "lb",
    "hash_key",
    "connect_timeout",
    "request_timeout",
    "idle_timeout",
    "retries",
    "retry_on",
    "max_connections",
    "max_queue",
    "consecutive_errors",
    "rate_limit",
    "fault",
    "access_log",
    "slow",
    "trace_sample",
    "max_request_headers",
    "max_request_header_bytes",
)
ACCESS_LOG_KEYS = ("sample",)
FAULT_KEYS = ("abort", "abort_percent", "delay", "delay_percent")
# HAProxy's `retry-on` conditions the mesh offers (the renderer writes them as they are). The one
# list: the mesh model (elastin.mesh.model.types) checks a cluster's retry policy against it.
# Not offered: 0rtt-rejected (the mesh sends no TLS early data to endpoints: it cannot happen).
RETRY_CONDITIONS: tuple[str, ...] = (
    "conn-failure",
    "empty-response",
    "response-timeout",
    "junk-response",
    "500",
    "502",
    "503",
    "504",
)
SERVICE_KEYS = (*COMMON_KEYS, "replicas", "update", "autoscale")
JOB_KEYS = (*COMMON_KEYS, "parallelism", "completions", "retries", "retry_delay")
UPDATE_KEYS = (
    "max_surge",
    "max_unavailable",
    "min_healthy_time",
    "healthy_deadline",
    "auto_revert",
    "canary",
)
RESOURCE_KEYS = ("cpu", "memory", "disk", "pids")
RESTART_KEYS = ("policy", "attempts", "backoff", "max_backoff", "reset_after")
HEALTH_KEYS = (
    "http",
    "tcp",
    "grpc",
    "service",
    "exec",
    "port",
    "interval",
    "timeout",
    "healthy_threshold",
    "unhealthy_threshold",
    "grace",
)
PORT_KEYS = ("port", "protocol")
CONSTRAINT_KEYS = ("attribute", "op", "value")
# the names a spec may choose from are those of the model's types (workload.py); KINDS too
RESTART_MODES: tuple[str, ...] = get_args(RestartMode)
PROTOCOLS: tuple[str, ...] = get_args(Protocol)
OPS: tuple[str, ...] = get_args(get_type_hints(Constraint)["op"])
LB_POLICIES: tuple[str, ...] = get_args(LbPolicy)

# Limits of what one exec can carry (Linux): every argument and every ``KEY=value`` of the
# environment is one string of at most MAX_ARG_STRLEN (32 pages, 128 KiB, with its NUL), and
# the arguments and the environment together must fit in ARG_MAX (a quarter of the stack
# limit, 2 MiB by default). The limits leave room for what the agent adds (PATH, ELASTIN_*).
MAX_SPEC_BYTES = 1024 * 1024  # a spec file (or a spec sent to the API)
MAX_ARG_BYTES = 128 * 1024  # one argument, or one KEY=value, with its terminating NUL
MAX_ARGV_BYTES = 256 * 1024  # a command with its arguments (each counted with its NUL)
MAX_ENV_BYTES = 256 * 1024  # a workload's environment (each KEY=value counted with its NUL)
MAX_ENV_ENTRIES = 4096  # variables in a workload's env

MIN_MEMORY = 4 * 1024**2
MAX_MEMORY = 64 * 1024**4
MAX_DISK = 1024**5
MAX_CPU = 1024 * 1000


class _Missing:
    pass


MISSING = _Missing()


@dataclass
class _Ctx:
    file: str
    issues: list[SpecIssue] = field(default_factory=list)

    def add(self, node: yaml.Node | None, path: str, message: str, hint: str = "") -> None:
        line = col = 0
        if node is not None:
            line, col = node.start_mark.line + 1, node.start_mark.column + 1
        self.issues.append(SpecIssue(path, message, hint, self.file, line, col))


def _kind_of(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return f"{_scalar(node)!r}"


def _scalar(node: yaml.Node) -> Any:
    """The Python value of a scalar node, resolved with YAML's safe rules."""
    assert isinstance(node, yaml.ScalarNode)
    if node.tag == "tag:yaml.org,2002:str":
        return node.value
    try:
        return yaml.constructor.SafeConstructor().construct_object(node, deep=True)
    except Exception:  # a tag its text does not fit (`!!bool x`, `!!float`): the text
        return node.value  # as written, which the field's own check then refuses


def _mapping(
    ctx: _Ctx,
    node: yaml.Node,
    path: str,
    allowed: tuple[str, ...],
    what: str,
    misplaced: Mapping[str, tuple[str, str]] | None = None,
) -> dict[str, tuple[yaml.Node, yaml.Node]] | None:
    """Keys of a mapping node -> (key node, value node); unknown keys reported, and keys that
    belong elsewhere (``misplaced``: key -> message and hint) with their own message."""
    if not isinstance(node, yaml.MappingNode):
        ctx.add(
            node,
            path,
            f"{what} must be a mapping, not {_kind_of(node)}",
            f"write it as `key: value` lines under {path or 'the top level'}",
        )
        return None
    out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for k, v in node.value:
        key = str(k.value) if isinstance(k, yaml.ScalarNode) else ""
        kpath = f"{path}.{key}" if path else key
        if key in out:
            ctx.add(k, kpath, f"{key!r} is given twice", "keep one of them")
            continue
        if misplaced and key in misplaced:
            ctx.add(k, kpath, *misplaced[key])
            continue
        if allowed and key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else ""
            hint += (" " if hint else "") + f"valid keys here: {', '.join(allowed)}"
            ctx.add(k, kpath, f"unknown key {key!r} in {what}", hint)
            continue
        out[key] = (k, v)
    return out


def _user(ctx: _Ctx, node: yaml.Node, path: str) -> str:
    """``user:``: a user name of the node, ``uid`` or ``uid:gid``, or ``root``."""
    v = _str(ctx, node, path)
    if v is None:
        return ""
    m = USER_ID_RE.match(v)
    if m and int(m.group(1)) in DYNAMIC_UIDS:
        ctx.add(
            node,
            path,
            f"uid {int(m.group(1))} belongs to Elastin's dynamic users "
            f"({DYNAMIC_UIDS.start}-{DYNAMIC_UIDS.stop - 1}): another instance may run as it",
            "pick a uid outside that range, or leave user: out to get a dynamic user",
        )
        return ""
    if m and all(int(g) < 2**32 - 1 for g in m.groups() if g is not None):
        return "root" if m.group(1).lstrip("0") == "" and m.group(2) is None else v
    if not m and USER_NAME_RE.match(v):
        return v
    ctx.add(
        node,
        path,
        f"{v!r} is not a user",
        "give a user name of the node (letters, digits, '_', '-', at most 32), a uid or "
        'uid:gid (e.g. user: "1000:1000"), root, or leave user: out to run as a dynamic '
        "user of its own",
    )
    return ""


def _str(ctx: _Ctx, node: yaml.Node, path: str) -> str | None:
    if not isinstance(node, yaml.ScalarNode):
        ctx.add(node, path, f"must be a string, not {_kind_of(node)}")
        return None
    v = _scalar(node)
    if v is None:
        ctx.add(node, path, "must not be empty")
        return None
    if isinstance(v, bool):
        ctx.add(node, path, f"must be a string, not {node.value!r}", "quote it")
        return None
    return str(v)


def _int(ctx: _Ctx, node: yaml.Node, path: str, lo: int, hi: int, hint: str = "") -> int | None:
    v = _scalar(node) if isinstance(node, yaml.ScalarNode) else MISSING
    if isinstance(v, bool) or not isinstance(v, int):
        shown = _kind_of(node)
        ctx.add(node, path, f"must be a whole number, not {shown}", hint or f"use {lo}..{hi}")
        return None
    if not lo <= v <= hi:
        ctx.add(node, path, f"{v} is out of range", hint or f"use a number from {lo} to {hi}")
        return None
    return v


def _one_of(
    ctx: _Ctx, node: yaml.Node, path: str, choices: tuple[str, ...], what: str
) -> str | None:
    """The value of a scalar that must be one of ``choices`` (numbers compare as their text),
    or None once an unknown one is reported with a did-you-mean and the choices."""
    value = _scalar(node) if isinstance(node, yaml.ScalarNode) else None
    text = "" if value is None else str(value)
    if text in choices:
        return text
    close = difflib.get_close_matches(text, choices, n=1) if text else []
    hint = (f"did you mean {close[0]!r}? " if close else "") + f"use one of {', '.join(choices)}"
    if isinstance(node, yaml.ScalarNode):
        ctx.add(node, path, f"unknown {what} {node.value!r}", hint)
    else:
        ctx.add(node, path, f"the {what} must be a name, not {_kind_of(node)}", hint)
    return None


def _name(ctx: _Ctx, node: yaml.Node, path: str, name: str, what: str, example: str) -> bool:
    """Whether ``name`` is a valid name (of an application, workload or port); reported if not."""
    if NAME_RE.match(name):
        return True
    ctx.add(
        node,
        path,
        f"{name!r} is not a valid {what}",
        "use lower-case letters, digits and - (at most 63), starting and ending with a letter "
        f"or digit, e.g. {example}",
    )
    return False


_HTTP_PATH = re.compile(r"/[\x21-\x7e]*")  # printable ASCII, no space: goes on a request line


def parse_duration(value: object) -> float:
    """Seconds from ``5``, ``2.5``, ``"500ms"``, ``"5s"``, ``"1m30s"``, ``"1h"``."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        try:
            value = float(value)
        except OverflowError:  # an integer of hundreds of digits
            raise ValueError(f"{value} is not a duration") from None
        if not math.isfinite(value):  # .nan passes every comparison; .inf is no duration
            raise ValueError(f"{value!r} is not a duration")
        if value < 0:
            raise ValueError(f"{value!r} is negative")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        pos, total = 0, 0.0
        for m in DURATION_RE.finditer(text):
            if m.start() != pos:
                break
            n, unit = float(m.group(1)), m.group(2)
            total += n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
            pos = m.end()
        if pos == len(text) and text and math.isfinite(total):
            return total
    raise ValueError(f"{value!r} is not a duration")


def _duration(ctx: _Ctx, node: yaml.Node, path: str, hi: float = 86400.0) -> float | None:
    try:
        v = parse_duration(_scalar(node) if isinstance(node, yaml.ScalarNode) else None)
    except ValueError:
        ctx.add(
            node,
            path,
            f"{_kind_of(node)} is not a duration",
            "write seconds (5) or with a unit: 500ms, 5s, 1m, 1m30s, 1h",
        )
        return None
    if v > hi:
        ctx.add(node, path, f"{v:g}s is too long", f"use at most {hi:g}s")
        return None
    return v


def _duration_from(
    ctx: _Ctx, node: yaml.Node, path: str, lo: float, hi: float, what: str, hint: str
) -> float | None:
    """A duration from ``lo`` to ``hi`` seconds; None once reported (``what``: how the
    message names it, ``hint``: what it is for)."""
    v = _duration(ctx, node, path, hi)
    if v is not None and v < lo:
        least = f"{lo:g}s" if lo >= 1 else f"{round(lo * 1000)}ms"
        ctx.add(node, path, f"{what} must be at least {least}", hint)
        return None
    return v


def _str_list(ctx: _Ctx, node: yaml.Node, path: str) -> list[str] | None:
    if isinstance(node, yaml.ScalarNode) and isinstance(_scalar(node), str):
        return [str(node.value)]
    if not isinstance(node, yaml.SequenceNode):
        ctx.add(node, path, f"must be a list, not {_kind_of(node)}", "write [a, b]")
        return None
    out = []
    for i, item in enumerate(node.value):
        s = _str(ctx, item, f"{path}[{i}]")
        if s is not None:
            out.append(s)
    return out


def _no_nul(ctx: _Ctx, node: yaml.Node, path: str, text: str) -> bool:
    """Whether ``text`` can reach a command line or an environment (no NUL byte)."""
    if "\0" not in text:
        return True
    ctx.add(node, path, "contains a NUL byte, which no program can receive", "remove it")
    return False


def _size(n: int) -> str:
    """``n`` bytes for people: ``131072 bytes (128 KiB)``."""
    return f"{n} bytes ({n / 1024:.0f} KiB)" if n >= 1024 else f"{n} bytes"


def _arg_fits(ctx: _Ctx, node: yaml.Node, path: str, text: str, what: str = "argument") -> bool:
    """Whether ``text`` can be one string of an exec: no NUL byte, and at most
    ``MAX_ARG_BYTES`` with its NUL (Linux's MAX_ARG_STRLEN); reported if not."""
    if not _no_nul(ctx, node, path, text):
        return False
    size = len(text.encode()) + 1
    if size <= MAX_ARG_BYTES:
        return True
    ctx.add(
        node,
        path,
        f"this {what} is {_size(size)}, over the limit of {_size(MAX_ARG_BYTES)} for one "
        "argument or variable (Linux's MAX_ARG_STRLEN)",
        "put large data in a file (beside the spec, in the workdir) and pass its path",
    )
    return False


Arg = tuple[yaml.Node, str, str]  # (node, field path, text) of one argument


def _command(ctx: _Ctx, node: yaml.Node, path: str) -> list[str] | None:
    """A command: a string split like a shell, or a list of strings; each part checked."""
    parts = _command_args(ctx, node, path)
    if parts is None:
        return None
    if not all([_arg_fits(ctx, n, p, text) for n, p, text in parts]):
        return None
    return [text for _, _, text in parts]


def _command_args(ctx: _Ctx, node: yaml.Node, path: str) -> list[Arg] | None:
    example = "write `command: python3 app.py` or `command: [python3, app.py]`"
    if isinstance(node, yaml.ScalarNode):
        value = _scalar(node)
        if value is None or value == "":
            ctx.add(node, path, "the command is empty", "name the program to run")
            return None
        if not isinstance(value, str):
            ctx.add(
                node,
                path,
                f"must be a string or a list, not {node.value!r}",
                f"name the program to run: {example} (quote a program named {node.value!r})",
            )
            return None
        try:
            split = shlex.split(value)
        except ValueError as e:
            ctx.add(node, path, f"cannot split the command: {e}", "check the quotes")
            return None
        if not split:
            ctx.add(node, path, "the command is empty", "name the program to run")
        return [(node, path, part) for part in split]
    if isinstance(node, yaml.SequenceNode):
        parts: list[Arg] = []
        for i, item in enumerate(node.value):
            ipath = f"{path}[{i}]"
            if i == 0 and isinstance(item, yaml.ScalarNode):
                value = _scalar(item)
                if value is not None and not isinstance(value, str):
                    ctx.add(
                        item,
                        ipath,
                        f"the program must be a name or a path, not {item.value!r}",
                        f"{example} (quote a program named {item.value!r})",
                    )
                    continue
            text = _arg_text(ctx, item, ipath)
            if text is not None:
                parts.append((item, ipath, text))
        if not node.value:
            ctx.add(node, path, "the command is empty", "name the program to run")
        return parts
    ctx.add(node, path, f"must be a string or a list, not {_kind_of(node)}", example)
    return None


def _arg_text(ctx: _Ctx, node: yaml.Node, path: str) -> str | None:
    """One argument of a command list: a string, or a number kept as written (``010`` stays
    ``010``, not 8); anything else is reported."""
    if _str(ctx, node, path) is None:
        return None
    return str(node.value)


def _args(ctx: _Ctx, node: yaml.Node, path: str) -> list[str] | None:
    """``args:``: a list of strings (numbers as written), or one string as one argument."""
    if isinstance(node, yaml.ScalarNode) and isinstance(_scalar(node), str):
        items: list[Arg] = [(node, path, str(node.value))]
    elif not isinstance(node, yaml.SequenceNode):
        ctx.add(node, path, f"must be a list, not {_kind_of(node)}", "write [a, b]")
        return None
    else:
        items = []
        for i, item in enumerate(node.value):
            text = _arg_text(ctx, item, f"{path}[{i}]")
            if text is not None:
                items.append((item, f"{path}[{i}]", text))
    if not all([_arg_fits(ctx, n, p, text) for n, p, text in items]):
        return None
    return [text for _, _, text in items]


def _argv_fits(ctx: _Ctx, node: yaml.Node, path: str, argv: list[str]) -> bool:
    """Whether a whole command line fits ``MAX_ARGV_BYTES``; reported if not."""
    size = sum(len(a.encode()) + 1 for a in argv)
    if size <= MAX_ARGV_BYTES:
        return True
    ctx.add(
        node,
        path,
        f"the command and its arguments are {_size(size)}, over the limit of "
        f"{_size(MAX_ARGV_BYTES)} (Linux's ARG_MAX holds them with the environment)",
        "put large data in a file (beside the spec, in the workdir) and pass its path",
    )
    return False


def _resources(ctx: _Ctx, node: yaml.Node, path: str) -> tuple[Resources | None, int]:
    m = _mapping(ctx, node, path, RESOURCE_KEYS, "resources")
    if m is None:
        return None, 0
    ok = True
    cpu = memory = disk = 0
    pids = 0
    for req in ("cpu", "memory"):
        if req not in m:
            ctx.add(
                node,
                f"{path}.{req}",
                f"resources need {req}",
                "e.g. cpu: 500m" if req == "cpu" else "e.g. memory: 128Mi",
            )
            ok = False
    if "cpu" in m:
        vnode = m["cpu"][1]
        try:
            cpu = parse_cpu(_scalar(vnode) if isinstance(vnode, yaml.ScalarNode) else [])
            if cpu <= 0:
                ctx.add(
                    vnode,
                    f"{path}.cpu",
                    "cpu must be more than zero",
                    "ask for at least 1m; e.g. 100m or 0.5",
                )
                ok = False
            elif cpu > MAX_CPU:
                ctx.add(
                    vnode,
                    f"{path}.cpu",
                    f"{cpu / 1000:g} cores is more than any machine",
                    "ask for at most 1024 cores",
                )
                ok = False
        except UnitError as e:
            ctx.add(vnode, f"{path}.cpu", str(e), "e.g. cpu: 500m or cpu: 2")
            ok = False
    for name, lo, hi, hint in (
        ("memory", MIN_MEMORY, MAX_MEMORY, "between 4Mi and 64Ti, e.g. 128Mi"),
        ("disk", 0, MAX_DISK, "between 0 and 1Pi, e.g. 1Gi"),
    ):
        if name not in m:
            continue
        vnode = m[name][1]
        try:
            v = parse_size(_scalar(vnode) if isinstance(vnode, yaml.ScalarNode) else [], what=name)
        except UnitError as e:
            ctx.add(vnode, f"{path}.{name}", str(e), f"write {hint}")
            ok = False
            continue
        if name == "memory" and v <= 0:
            ctx.add(vnode, f"{path}.memory", "memory must be more than zero", f"ask for {hint}")
            ok = False
        elif not lo <= v <= hi:
            ctx.add(
                vnode, f"{path}.{name}", f"{name} {vnode.value} is out of range", f"ask for {hint}"
            )
            ok = False
        elif name == "memory":
            memory = v
        else:
            disk = v
    if "pids" in m:
        p = _int(
            ctx, m["pids"][1], f"{path}.pids", 8, 4_194_304, "a pids limit from 8 up, e.g. 256"
        )
        if p is None:
            ok = False
        else:
            pids = p
    return (Resources(cpu, memory, disk) if ok else None), pids


def _restart(ctx: _Ctx, node: yaml.Node, path: str, default: str) -> RestartPolicy | None:
    if isinstance(node, yaml.ScalarNode):
        mode = _one_of(ctx, node, path, RESTART_MODES, "restart policy")
        return None if mode is None else RestartPolicy(mode=mode)  # type: ignore[arg-type]
    m = _mapping(ctx, node, path, RESTART_KEYS, "restart")
    if m is None:
        return None
    kw: dict[str, Any] = {"mode": default}
    if "policy" in m:
        kw["mode"] = _one_of(ctx, m["policy"][1], f"{path}.policy", RESTART_MODES, "restart policy")
    if "attempts" in m:
        kw["attempts"] = _int(
            ctx, m["attempts"][1], f"{path}.attempts", 0, 10_000, "0 (unlimited) up to 10000"
        )
    for key in ("backoff", "max_backoff", "reset_after"):
        if key in m:
            kw[key] = _duration(ctx, m[key][1], f"{path}.{key}")
    if any(v is None for v in kw.values()):
        return None
    if kw.get("backoff", 1.0) > kw.get("max_backoff", 60.0):
        ctx.add(
            node,
            f"{path}.backoff",
            "backoff is longer than max_backoff",
            "make max_backoff at least as long as backoff",
        )
        return None
    return RestartPolicy(**kw)


def _health(ctx: _Ctx, node: yaml.Node, path: str, port_names: list[str]) -> HealthCheck | None:
    m = _mapping(ctx, node, path, HEALTH_KEYS, "health")
    if m is None:
        return None
    types = [t for t in ("http", "tcp", "grpc", "exec") if t in m]
    if len(types) != 1:
        ctx.add(
            node,
            path,
            "a health check needs exactly one of http, tcp, grpc, exec"
            + (f" (found {', '.join(types)})" if types else ""),
            "e.g. `http: /healthz`, `tcp: http` or `grpc: api` (a port name), "
            "or `exec: [cmd, arg]`",
        )
        return None
    kind = types[0]
    kw: dict[str, Any] = {"type": kind}
    ok = True
    port = ""
    if "port" in m:
        port = _str(ctx, m["port"][1], f"{path}.port") or ""
    if kind == "http":
        p = _str(ctx, m["http"][1], f"{path}.http")
        if p is not None and p.startswith("/") and not _HTTP_PATH.fullmatch(p):
            ctx.add(
                m["http"][1],
                f"{path}.http",
                f"{p!r} is not a URL path (spaces and control characters cannot be sent)",
                "percent-encode them, e.g. /health%20check",
            )
            ok = False
        elif p is None or not p.startswith("/"):
            if p is not None:
                ctx.add(
                    m["http"][1],
                    f"{path}.http",
                    f"{p!r} is not a path",
                    "start it with /, e.g. /healthz",
                )
            ok = False
        else:
            kw["path"] = p
    elif kind in ("tcp", "grpc"):
        p = _str(ctx, m[kind][1], f"{path}.{kind}")
        if p is None:
            ok = False
        elif not port:
            port = p
    else:
        cmd = _command(ctx, m["exec"][1], f"{path}.exec")
        if not cmd:
            ok = False
        else:
            kw["command"] = tuple(cmd)
    if "service" in m:
        if kind != "grpc":
            ctx.add(
                m["service"][1],
                f"{path}.service",
                "`service` belongs to a grpc health check",
                "remove it, or check with `grpc: <port>` and `service: <name>`",
            )
            ok = False
        else:
            kw["service"] = _str(ctx, m["service"][1], f"{path}.service") or ""
    if kind in ("http", "tcp", "grpc"):
        if not port:
            if len(port_names) == 1:
                port = port_names[0]
            else:
                ctx.add(
                    node,
                    f"{path}.port",
                    "the health check needs a port",
                    "name one of the workload's ports with `port:`"
                    + (
                        f" ({', '.join(port_names)})"
                        if port_names
                        else "; the workload declares none: add `ports:`"
                    ),
                )
                ok = False
        elif port not in port_names:
            close = difflib.get_close_matches(port, port_names, n=1)
            ctx.add(
                m.get("port", m.get(kind, (node, node)))[1],
                f"{path}.port",
                f"the workload has no port named {port!r}",
                (f"did you mean {close[0]!r}? " if close else "")
                + f"declared ports: {', '.join(port_names) or 'none'}",
            )
            ok = False
        kw["port"] = port
    for key in ("interval", "timeout", "grace"):
        if key in m:
            d = _duration(ctx, m[key][1], f"{path}.{key}", 3600)
            if d is None:
                ok = False
            elif key != "grace" and d <= 0:
                ctx.add(m[key][1], f"{path}.{key}", f"{key} must be more than zero", "e.g. 5s")
                ok = False
            else:
                kw[key] = d
    for key in ("healthy_threshold", "unhealthy_threshold"):
        if key in m:
            v = _int(ctx, m[key][1], f"{path}.{key}", 1, 100)
            if v is None:
                ok = False
            else:
                kw[key] = v
    return HealthCheck(**kw) if ok else None


def _ports(ctx: _Ctx, node: yaml.Node, path: str) -> list[Port] | None:
    m = _mapping(ctx, node, path, (), "ports")
    if m is None:
        return None
    out: list[Port] = []
    seen: dict[int, str] = {}
    for name, (knode, vnode) in m.items():
        ppath = f"{path}.{name}"
        if not _name(ctx, knode, ppath, name, "port name", "http"):
            continue
        proto = "http"
        pnode = vnode
        if isinstance(vnode, yaml.MappingNode):
            pm = _mapping(ctx, vnode, ppath, PORT_KEYS, "a port")
            if pm is None:
                continue
            if "protocol" in pm:
                p = _one_of(ctx, pm["protocol"][1], f"{ppath}.protocol", PROTOCOLS, "protocol")
                if p is None:
                    continue
                proto = p
            pnode = pm["port"][1] if "port" in pm else None  # type: ignore[assignment]
        number = 0
        if pnode is not None and not (
            isinstance(pnode, yaml.ScalarNode) and _scalar(pnode) is None
        ):
            n = _int(ctx, pnode, ppath, 0, 65535, "a port from 1 to 65535, or 0 for any free port")
            if n is None:
                continue
            number = n
        if number and number in seen:
            ctx.add(
                pnode,
                ppath,
                f"port {number} is already used by {seen[number]!r}",
                "give each named port its own number",
            )
            continue
        if number:
            seen[number] = name
        out.append(Port(name, number, proto))  # type: ignore[arg-type]
    return out


def _mesh(ctx: _Ctx, node: yaml.Node, path: str) -> MeshPolicy | None:
    m = _mapping(ctx, node, path, MESH_KEYS, "mesh")
    if m is None:
        return None
    kw: dict[str, Any] = {}
    ok = True
    if "lb" in m:
        kw["lb"] = _one_of(ctx, m["lb"][1], f"{path}.lb", LB_POLICIES, "load-balancing policy")
    if "hash_key" in m:
        key = _str(ctx, m["hash_key"][1], f"{path}.hash_key")
        if key is not None and not HASH_KEY_RE.match(key):
            ctx.add(
                m["hash_key"][1],
                f"{path}.hash_key",
                f"{key!r} is not a header or cookie name",
                "use letters, digits, '-', '_' and '.' (at most 128), e.g. hash_key: x-user",
            )
            ok = False
        kw["hash_key"] = key
    if kw.get("lb") in ("hash_header", "hash_cookie") and not kw.get("hash_key"):
        ctx.add(
            node,
            f"{path}.hash_key",
            f"{kw['lb']} needs hash_key",
            "name the header or cookie to hash on, e.g. hash_key: x-user",
        )
        ok = False
    for key in ("connect_timeout", "request_timeout", "idle_timeout"):
        if key in m:
            kw[key] = _duration(ctx, m[key][1], f"{path}.{key}", 3600)
    for key, hi in (
        ("retries", 10),
        ("max_connections", 1_000_000),
        ("max_queue", 1_000_000),
        ("consecutive_errors", 1000),
        ("rate_limit", 1_000_000),
    ):
        if key in m:
            kw[key] = _int(ctx, m[key][1], f"{path}.{key}", 0, hi)
    if "retry_on" in m:
        rnode = m["retry_on"][1]
        items = rnode.value if isinstance(rnode, yaml.SequenceNode) else [rnode]
        conds = [
            _one_of(ctx, item, f"{path}.retry_on", RETRY_CONDITIONS, "retry condition")
            for item in items
        ]
        if None in conds:
            ok = False
        kw["retry_on"] = tuple(conds)
    if "fault" in m:
        kw["fault"] = _fault(ctx, m["fault"][1], f"{path}.fault")
    if "access_log" in m:
        log = _access_log(ctx, m["access_log"][1], f"{path}.access_log")
        if log is None:
            ok = False
        else:
            kw["access_log"], kw["access_log_sample"] = log
    if "slow" in m:
        kw["slow"] = _duration(ctx, m["slow"][1], f"{path}.slow", 3600)
    if "trace_sample" in m:
        kw["trace_sample"] = _share(ctx, m["trace_sample"][1], f"{path}.trace_sample")
    if "max_request_headers" in m:
        kw["max_request_headers"] = _int(
            ctx,
            m["max_request_headers"][1],
            f"{path}.max_request_headers",
            1,
            REQUEST_HEADERS_MOST,
            f"use 1..{REQUEST_HEADERS_MOST} (the default is {REQUEST_HEADERS_DEFAULT}, Envoy's;"
            " the mesh allows no more)",
        )
    if "max_request_header_bytes" in m:
        kw["max_request_header_bytes"] = _header_bytes(
            ctx, m["max_request_header_bytes"][1], f"{path}.max_request_header_bytes"
        )
    if not ok or any(v is None for v in kw.values()):
        return None
    return MeshPolicy(**kw)


ACCESS_LOG_HINT = (
    "use all (every request), errors (abnormal ones only), off, or {sample: 0.05} (abnormal "
    "ones and 5% of the others, the default being 1%); true or false mean all or off"
)


def _access_log(ctx: _Ctx, node: yaml.Node, path: str) -> tuple[bool, float] | None:
    """``mesh.access_log``: (on, share of normal requests logged) from ``all``, ``errors``,
    ``off`` (YAML's ``off`` is false), ``true``/``false`` (as before: all/off) or
    ``{sample: 0.05}``."""
    if isinstance(node, yaml.MappingNode):
        m = _mapping(ctx, node, path, ACCESS_LOG_KEYS, "access_log")
        if m is None:
            return None
        if "sample" not in m:
            if not node.value:  # else the unknown key is what was reported
                ctx.add(node, path, "access_log as a mapping needs sample", ACCESS_LOG_HINT)
            return None
        share = _share(ctx, m["sample"][1], f"{path}.sample")
        return None if share is None else (True, share)
    value = _scalar(node) if isinstance(node, yaml.ScalarNode) else MISSING
    if value is True or value == "all":
        return True, 1.0
    if value is False or value == "off":
        return False, 0.0
    if value == "errors":
        return True, 0.0
    close = difflib.get_close_matches(str(value), ("all", "errors", "off"), n=1)
    ctx.add(
        node,
        path,
        f"access_log must be all, errors, off or {{sample: N}}, not {_kind_of(node)}",
        (f"did you mean {close[0]!r}? " if close else "") + ACCESS_LOG_HINT,
    )
    return None


def _header_bytes(ctx: _Ctx, node: yaml.Node, path: str) -> int | None:
    """``mesh.max_request_header_bytes``: bytes (a whole number) or a size (``8Ki``), from
    1 KiB up to what the node's proxy holds."""
    hint = (
        f"write bytes or a size from 1Ki to {REQUEST_HEADER_BYTES_MOST // 1024}Ki, e.g. 8Ki (left"
        " out, the limit is what the node's proxy holds, about 15 KiB with the request line)"
    )
    v = _scalar(node) if isinstance(node, yaml.ScalarNode) else MISSING
    try:
        if isinstance(v, bool) or not isinstance(v, int | str):
            raise UnitError(f"{_kind_of(node)} is not a size")
        n = v if isinstance(v, int) else parse_size(v, what="max_request_header_bytes")
    except UnitError as e:
        ctx.add(node, path, str(e), hint)
        return None
    if not 1024 <= n <= REQUEST_HEADER_BYTES_MOST:
        ctx.add(node, path, f"{_size(n)} is out of range", hint)
        return None
    return n


def _share(ctx: _Ctx, node: yaml.Node, path: str) -> float | None:
    """A share of requests: a number from 0 to 1 (0.01 = 1%), or a percentage ``"1%"``."""
    v = _scalar(node) if isinstance(node, yaml.ScalarNode) else MISSING
    if isinstance(v, str) and re.fullmatch(r"\s*\d+(\.\d*)?\s*%\s*", v):
        v = float(v.strip()[:-1]) / 100
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1:
        ctx.add(
            node,
            path,
            f"{_kind_of(node)} is not a share of requests",
            "write a number from 0 to 1 or a percentage: 0.01 or 1% is one request in 100",
        )
        return None
    return float(v)


def _fault(ctx: _Ctx, node: yaml.Node, path: str) -> Fault | None:
    """``{abort: 503, abort_percent: 10, delay: 200ms, delay_percent: 50}``; a percentage
    left out is 100 when its fault is given."""
    m = _mapping(ctx, node, path, FAULT_KEYS, "fault")
    if m is None:
        return None
    if "abort" not in m and "delay" not in m:
        ctx.add(node, path, "a fault needs abort or delay", "e.g. {abort: 503, abort_percent: 10}")
        return None
    kw: dict[str, Any] = {}
    if "abort" in m:
        kw["abort_status"] = _int(ctx, m["abort"][1], f"{path}.abort", 200, 599, "an HTTP status")
        kw["abort_percent"] = 100
    if "delay" in m:
        kw["delay"] = _duration(ctx, m["delay"][1], f"{path}.delay", 60)
        kw["delay_percent"] = 100
    for key, needs in (("abort_percent", "abort"), ("delay_percent", "delay")):
        if key not in m:
            continue
        if needs not in m:
            ctx.add(m[key][1], f"{path}.{key}", f"{key} without {needs}", f"add {needs}: ...")
            return None
        kw[key] = _int(ctx, m[key][1], f"{path}.{key}", 0, 100, "a percentage, 0 to 100")
    if any(v is None for v in kw.values()):
        return None
    return Fault(**kw)


def _constraints(ctx: _Ctx, node: yaml.Node, path: str) -> list[Constraint] | None:
    if not isinstance(node, yaml.SequenceNode):
        ctx.add(
            node,
            path,
            "must be a list of constraints",
            "e.g. - {attribute: node.name, op: '==', value: node-1}",
        )
        return None
    out = []
    for i, item in enumerate(node.value):
        cpath = f"{path}[{i}]"
        m = _mapping(ctx, item, cpath, CONSTRAINT_KEYS, "a constraint")
        if m is None:
            continue
        if "attribute" not in m or "value" not in m:
            ctx.add(
                item,
                cpath,
                "a constraint needs attribute and value",
                "e.g. {attribute: node.name, value: node-1}",
            )
            continue
        attr = _str(ctx, m["attribute"][1], f"{cpath}.attribute")
        op = _one_of(ctx, m["op"][1], f"{cpath}.op", OPS, "operator") if "op" in m else "=="
        if op is None:
            continue
        vnode = m["value"][1]
        value: str | tuple[str, ...]
        if op in ("in", "not_in"):
            vals = _str_list(ctx, vnode, f"{cpath}.value")
            if vals is None:
                continue
            value = tuple(vals)
        else:
            v = _str(ctx, vnode, f"{cpath}.value")
            if v is None:
                continue
            value = v
        if attr:
            out.append(Constraint(attr, op, value))  # type: ignore[arg-type]
    return out


def _workload(
    ctx: _Ctx, name: str, knode: yaml.Node, node: yaml.Node, wtype: str, base_dir: str
) -> Workload | None:
    section = "services" if wtype == "service" else "jobs"
    path = f"{section}.{name}"
    _name(ctx, knode, path, name, "name", "web-api")
    m = _mapping(
        ctx,
        node,
        path,
        SERVICE_KEYS if wtype == "service" else JOB_KEYS,
        "a service" if wtype == "service" else "a job",
        MISPLACED_IN_SERVICE if wtype == "service" else MISPLACED_IN_JOB,
    )
    if m is None:
        return None
    before = len(ctx.issues)
    kw: dict[str, Any] = {"name": name, "type": wtype}
    kind = "task"
    if "kind" in m:
        kind = _one_of(ctx, m["kind"][1], f"{path}.kind", KINDS, "kind") or "?"
        kw["kind"] = kind
    if "image" in m:
        kw["image"] = _str(ctx, m["image"][1], f"{path}.image") or ""
    if kind in ("container", "vm") and not kw.get("image"):
        ctx.add(
            node,
            f"{path}.image",
            f"a {kind} needs an image",
            "e.g. image: docker.io/library/python:3.11-slim"
            if kind == "container"
            else "e.g. image: ./images/guest.qcow2",
        )
    command: list[str] = []
    if "command" in m:
        command = _command(ctx, m["command"][1], f"{path}.command") or []
    if "args" in m:
        command += _args(ctx, m["args"][1], f"{path}.args") or []
    if kind == "task" and "command" not in m:
        ctx.add(node, f"{path}.command", "a task needs a command", "e.g. command: python3 app.py")
    if command:
        _argv_fits(
            ctx, m.get("command", m.get("args", (node, node)))[1], f"{path}.command", command
        )
    kw["command"] = tuple(command)
    if "env" in m:
        em = _mapping(ctx, m["env"][1], f"{path}.env", (), "env")
        env = []
        if em is not None and len(em) > MAX_ENV_ENTRIES:
            ctx.add(
                m["env"][1],
                f"{path}.env",
                f"{len(em)} variables are over the limit of {MAX_ENV_ENTRIES}",
                "put configuration in a file (beside the spec, in the workdir) and pass its path",
            )
            em = None
        for key, (ek, ev) in (em or {}).items():
            if not ENV_RE.match(key):
                ctx.add(
                    ek,
                    f"{path}.env.{key}",
                    f"{key!r} is not a valid variable name",
                    "use letters, digits and _, not starting with a digit",
                )
                continue
            if not isinstance(ev, yaml.ScalarNode):
                ctx.add(ev, f"{path}.env.{key}", "must be a string or number")
                continue
            value = "" if _scalar(ev) is None else str(ev.value)
            if _arg_fits(ctx, ev, f"{path}.env.{key}", f"{key}={value}", "variable"):
                env.append((key, value))
        size = sum(len(k.encode()) + len(v.encode()) + 2 for k, v in env)
        if size > MAX_ENV_BYTES:
            ctx.add(
                m["env"][1],
                f"{path}.env",
                f"the environment is {_size(size)}, over the limit of {_size(MAX_ENV_BYTES)} "
                "(Linux's ARG_MAX holds it with the command line)",
                "put large data in a file (beside the spec, in the workdir) and pass its path",
            )
        kw["env"] = tuple(sorted(env))
    if "workdir" in m:
        wd = _str(ctx, m["workdir"][1], f"{path}.workdir") or ""
        if not _no_nul(ctx, m["workdir"][1], f"{path}.workdir", wd):
            wd = ""
        elif wd and not os.path.isabs(wd):
            wd = os.path.normpath(os.path.join(base_dir or os.getcwd(), wd))
        kw["workdir"] = wd
    elif kind == "task" and base_dir:
        kw["workdir"] = os.path.normpath(base_dir)  # as compose: where the spec file is
    if "resources" in m:
        res, pids = _resources(ctx, m["resources"][1], f"{path}.resources")
        if res is not None:
            kw["resources"] = res
        kw["pids"] = pids
    if "priority" in m:
        kw["priority"] = _int(
            ctx,
            m["priority"][1],
            f"{path}.priority",
            0,
            100,
            "use 0 (lowest) to 100 (highest); the default is 50",
        )
    if "replicas" in m:
        kw["replicas"] = _int(ctx, m["replicas"][1], f"{path}.replicas", 0, MAX_REPLICAS)
    for key in ("parallelism", "completions"):
        if key in m:
            kw[key] = _int(ctx, m[key][1], f"{path}.{key}", 1, 1000)
    if "retries" in m:
        kw["retries"] = _int(ctx, m["retries"][1], f"{path}.retries", 0, 1000)
    if "retry_delay" in m:
        kw["retry_delay"] = _duration(ctx, m["retry_delay"][1], f"{path}.retry_delay", 3600)
    if "update" in m:
        replicas = kw.get("replicas", 1)
        kw["update"] = _update(
            ctx, m["update"][1], f"{path}.update", replicas if isinstance(replicas, int) else 1000
        )
    completions = kw.get("completions", 1)  # None: invalid, reported above
    if (
        wtype == "job"
        and isinstance(kw.get("parallelism"), int)
        and isinstance(completions, int)
        and kw["parallelism"] > completions
    ):
        ctx.add(
            m["parallelism"][1],
            f"{path}.parallelism",
            f"parallelism {kw['parallelism']} is more than completions {kw.get('completions', 1)}",
            "parallelism is how many run at once; make it at most completions",
        )
    kw["restart"] = RestartPolicy(mode="always" if wtype == "service" else "on-failure")
    if "restart" in m:
        kw["restart"] = _restart(
            ctx,
            m["restart"][1],
            f"{path}.restart",
            "always" if wtype == "service" else "on-failure",
        )
    ports: list[Port] = []
    if "ports" in m:
        ports = _ports(ctx, m["ports"][1], f"{path}.ports") or []
        kw["ports"] = tuple(ports)
    if "health" in m:
        kw["health"] = _health(ctx, m["health"][1], f"{path}.health", [p.name for p in ports])
    if "autoscale" in m:
        _autoscale_replicas(ctx, m, path, ports, kw)
    if "depends_on" in m:
        kw["depends_on"] = tuple(_str_list(ctx, m["depends_on"][1], f"{path}.depends_on") or [])
    if "upstreams" in m:
        kw["upstreams"] = tuple(_str_list(ctx, m["upstreams"][1], f"{path}.upstreams") or [])
    if "mesh" in m:
        kw["mesh"] = _mesh(ctx, m["mesh"][1], f"{path}.mesh")
    if "constraints" in m:
        kw["constraints"] = tuple(
            _constraints(ctx, m["constraints"][1], f"{path}.constraints") or []
        )
    if "stop_grace" in m:
        kw["stop_grace"] = _duration(ctx, m["stop_grace"][1], f"{path}.stop_grace", 3600)
    if "user" in m:
        kw["user"] = _user(ctx, m["user"][1], f"{path}.user")
    if len(ctx.issues) != before or any(v is None for v in kw.values()):
        return None
    return Workload(**kw)


PERCENT_RE = re.compile(r"^(\d{1,3})%$")


def _surge(
    ctx: _Ctx, node: yaml.Node, path: str, replicas: int, round_up: bool
) -> tuple[int, int] | None:
    """``max_surge`` / ``max_unavailable``: a count, or a percentage of ``replicas`` rounded as
    Kubernetes does (surge up, unavailable down). The count and the number as written (the
    count or the percentage); None once reported."""
    value = _scalar(node) if isinstance(node, yaml.ScalarNode) else None
    if isinstance(value, str):
        m = PERCENT_RE.match(value.strip())
        if m is None or int(m.group(1)) > 100:
            ctx.add(
                node,
                path,
                f"{value!r} is neither a count nor a percentage",
                "write a number of instances (1) or a percentage of replicas from 0% to 100% (25%)",
            )
            return None
        share = int(m.group(1)) * replicas
        return (-(-share // 100) if round_up else share // 100), int(m.group(1))
    n = _int(ctx, node, path, 0, 1000, "a number of instances from 0, or a percentage (25%)")
    return None if n is None else (n, n)


def _update(ctx: _Ctx, node: yaml.Node, path: str, replicas: int) -> UpdatePolicy | None:
    """A service's ``update:`` block (its rollouts): counts resolved against ``replicas``."""
    m = _mapping(ctx, node, path, UPDATE_KEYS, "update")
    if m is None:
        return None
    kw: dict[str, Any] = {}
    ok = True
    written: list[int] = []
    for key, up in (("max_surge", True), ("max_unavailable", False)):
        if key in m:
            got = _surge(ctx, m[key][1], f"{path}.{key}", replicas, up)
            if got is None:
                ok = False
            else:
                kw[key], number = got
                written.append(number)
    default = UpdatePolicy()
    surge = kw.get("max_surge", default.max_surge)
    unavailable = kw.get("max_unavailable", default.max_unavailable)
    if ok and surge == 0 and unavailable == 0:
        if any(written):  # a percentage of few replicas rounded to nothing: as Kubernetes does
            kw["max_unavailable"] = 1
        else:
            ctx.add(
                m["max_surge"][1],
                f"{path}.max_surge",
                "max_surge and max_unavailable are both 0: no instance could be replaced",
                "allow one more instance during an update (max_surge: 1, the default) or one "
                "fewer (max_unavailable: 1)",
            )
            ok = False
    for key in ("min_healthy_time", "healthy_deadline"):
        if key in m:
            d = _duration(ctx, m[key][1], f"{path}.{key}")
            if d is None:
                ok = False
            else:
                kw[key] = d
    min_healthy = kw.get("min_healthy_time", default.min_healthy_time)
    deadline = kw.get("healthy_deadline", default.healthy_deadline)
    if deadline <= min_healthy:
        ctx.add(
            m.get("healthy_deadline", m.get("min_healthy_time", (node, node)))[1],
            f"{path}.healthy_deadline",
            f"healthy_deadline ({deadline:g}s) must be longer than min_healthy_time "
            f"({min_healthy:g}s): no instance could count as healthy in time",
            "make healthy_deadline longer (the default is 5m) or min_healthy_time shorter",
        )
        ok = False
    if "auto_revert" in m:
        vnode = m["auto_revert"][1]
        value = _scalar(vnode) if isinstance(vnode, yaml.ScalarNode) else None
        if not isinstance(value, bool):
            ctx.add(vnode, f"{path}.auto_revert", "must be true or false", "e.g. auto_revert: true")
            ok = False
        else:
            kw["auto_revert"] = value
    if "canary" in m:
        c = _int(
            ctx,
            m["canary"][1],
            f"{path}.canary",
            0,
            replicas,
            f"canaries are new instances started beside the old ones: 0 to replicas ({replicas})",
        )
        if c is None:
            ok = False
        else:
            kw["canary"] = c
    return UpdatePolicy(**kw) if ok else None


# ---- autoscale: (docs/autoscaling.md) -------------------------------------------------------

AUTOSCALE_KEYS = (
    "min",
    "max",
    "metrics",
    "behavior",
    "tolerance",
    "interval",
    "startup_grace",
    "idle_after",
    "vertical",
)
# the keys that turn the horizontal autoscaler on (without them, only `vertical:` is given)
HORIZONTAL_KEYS = tuple(k for k in AUTOSCALE_KEYS if k != "vertical")
BEHAVIOR_KEYS = ("scale_up", "scale_down")
RULES_KEYS = ("stabilization_window", "select", "policies")
POLICY_KEYS = ("type", "value", "period")
APP_METRIC_KEYS = ("metric", "target", "port", "path")
VERTICAL_KEYS = ("mode", "percentile", "margin", "half_life", "min", "max")
BOUND_KEYS = ("cpu", "memory")
BUILTIN_METRICS: tuple[str, ...] = tuple(k for k in METRIC_KINDS if k != "app")
POLICY_TYPES: tuple[str, ...] = get_args(PolicyType)
SELECT_POLICIES: tuple[str, ...] = get_args(SelectPolicy)
VERTICAL_MODES: tuple[str, ...] = get_args(VerticalMode)
SCALE_TO_ZERO_PROTOCOLS = ("http", "http2", "grpc")
# used with fullmatch: a `^...$` match let "queue_depth\n" pass (`$` matches before a final \n)
PERCENTAGE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
MAX_REPLICAS = 1000
METRICS_HINT = (
    "use one of cpu: 70%, memory: 80%, rps: 100, inflight: 10, p99: 250ms, or an application "
    "gauge: {metric: queue_depth, target: 10, port: metrics}"
)
AUTOSCALE_EXAMPLE = "e.g. autoscale: {min: 1, max: 10, metrics: [{cpu: 70%}]}"

# The bounded fields of autoscale: and vertical:, in the order they are checked:
# (key, least, most, how a message names it, what it is for).
_Bounds = tuple[tuple[str, float, float, str, str], ...]
AUTOSCALE_SHARES: _Bounds = (
    (
        "tolerance",
        0.0,
        0.99,
        "the tolerance",
        "how far from its target a metric may be before the replicas change: 0% to 99%, "
        "e.g. 10% (the default)",
    ),
)
AUTOSCALE_DURATIONS: _Bounds = (
    (
        "interval",
        0.1,
        3600,
        "the interval",
        "how often the autoscaler decides, e.g. 1s (the default) or 15s (HPA's)",
    ),
    ("startup_grace", 0, 86400, "startup_grace", "e.g. 30s"),
    (
        "idle_after",
        1,
        86400,
        "idle_after",
        "how long a service with min: 0 goes without a request before its last replica "
        "stops, e.g. 5m (the default)",
    ),
)
VERTICAL_SHARES: _Bounds = (
    (
        "percentile",
        0.01,
        1.0,
        "the percentile",
        "the share of the usage samples the recommendation covers: 1% to 100%, e.g. 90%",
    ),
    (
        "margin",
        0.0,
        10.0,
        "the margin",
        "added on top of the percentile: 0% to 1000%, e.g. 15%",
    ),
)
VERTICAL_DURATIONS: _Bounds = (
    (
        "half_life",
        1,
        30 * 86400,
        "the half life",
        "how long until a sample weighs half as much as a new one, e.g. 24h",
    ),
)


def _number(ctx: _Ctx, node: yaml.Node, path: str, what: str, hint: str) -> float | None:
    """A finite number (int or float, not a boolean); None once reported."""
    v = _scalar(node) if isinstance(node, yaml.ScalarNode) else MISSING
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        ctx.add(node, path, f"{what} must be a number, not {_kind_of(node)}", hint)
        return None
    return float(v)


def _fraction(
    ctx: _Ctx, node: yaml.Node, path: str, lo: float, hi: float, what: str, hint: str
) -> float | None:
    """A share written as a percentage (``15%``) or a number (``0.15``), within lo..hi."""
    v = _scalar(node) if isinstance(node, yaml.ScalarNode) else MISSING
    if isinstance(v, str) and (pm := PERCENTAGE_RE.match(v)):
        v = float(pm.group(1)) / 100
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        ctx.add(node, path, f"{what} must be a percentage or a number, not {_kind_of(node)}", hint)
        return None
    if not lo <= v <= hi:
        ctx.add(node, path, f"{what} {node.value} is out of range", hint)
        return None
    return float(v)


def _bounded(
    ctx: _Ctx,
    m: dict[str, tuple[yaml.Node, yaml.Node]],
    path: str,
    kw: dict[str, Any],
    parse: Callable[[_Ctx, yaml.Node, str, float, float, str, str], float | None],
    fields: _Bounds,
) -> None:
    """Parse each of ``fields`` given in ``m`` with ``parse`` into ``kw`` (None once
    reported)."""
    for key, lo, hi, what, hint in fields:
        if key in m:
            kw[key] = parse(ctx, m[key][1], f"{path}.{key}", lo, hi, what, hint)


def _utilisation(ctx: _Ctx, node: yaml.Node, path: str, kind: str) -> float | None:
    """``cpu: 70%`` / ``memory: 80%``: a utilisation of the request, as a fraction."""
    v = _scalar(node) if isinstance(node, yaml.ScalarNode) else MISSING
    pm = PERCENTAGE_RE.match(v) if isinstance(v, str) else None
    if pm is None:
        ctx.add(
            node,
            path,
            f"the {kind} target must be a percentage of the request, not {_kind_of(node)}",
            f"e.g. {kind}: 70% (the average {kind} use of the replicas, as a share of their "
            f"resources.{kind})",
        )
        return None
    share = float(pm.group(1)) / 100
    if share <= 0:
        ctx.add(node, path, f"the {kind} target must be more than 0%", f"e.g. {kind}: 70%")
        return None
    if share > 1:
        why = (
            "memory is a hard limit: an instance is OOM-killed before it uses more than its request"
            if kind == "memory"
            else "cpu is a quota of the request: an instance never uses more than 100% of it"
        )
        ctx.add(
            node,
            path,
            f"the {kind} target {v.strip()} is over 100%: {why}",  # type: ignore[union-attr]
            f"use at most 100%, e.g. {kind}: 80%",
        )
        return None
    return share


def _positive(ctx: _Ctx, node: yaml.Node, path: str, kind: str, example: str) -> float | None:
    """``rps: 100`` / ``inflight: 10``: a number per replica, more than 0."""
    v = _number(ctx, node, path, f"the {kind} target", f"e.g. {example}")
    if v is None:
        return None
    if v <= 0:
        ctx.add(node, path, f"the {kind} target must be more than 0", f"e.g. {example}")
        return None
    return v


def _metric_port(
    ctx: _Ctx,
    node: yaml.Node,
    m: dict[str, tuple[yaml.Node, yaml.Node]],
    path: str,
    ports: list[Port],
) -> str | None:
    """The named port an application metric is read from: given, or the only port."""
    names = [p.name for p in ports]
    if "port" not in m and len(ports) != 1:
        ctx.add(
            node,
            f"{path}.port",
            "the metric needs the port of the service's Prometheus endpoint",
            "name one of the service's ports with `port:`"
            + (f" ({', '.join(names)})" if names else "; the service declares none: add `ports:`"),
        )
        return None
    pnode = m["port"][1] if "port" in m else node
    name = _str(ctx, pnode, f"{path}.port") if "port" in m else ports[0].name
    if name is None:
        return None
    port = next((p for p in ports if p.name == name), None)
    if port is None:
        close = difflib.get_close_matches(name, names, n=1)
        ctx.add(
            pnode,
            f"{path}.port",
            f"the service has no port named {name!r}",
            (f"did you mean {close[0]!r}? " if close else "")
            + f"declared ports: {', '.join(names) or 'none'}",
        )
        return None
    if port.protocol not in ("http", "http2"):
        ctx.add(
            pnode,
            f"{path}.port",
            f"port {name!r} is {port.protocol}: the metric is read with an HTTP GET",
            "name the port that serves the Prometheus endpoint (protocol http or http2), "
            "or serve it on a port of its own: ports: {metrics: {port: 0, protocol: http}}",
        )
        return None
    return name


def _app_metric(ctx: _Ctx, node: yaml.Node, path: str, ports: list[Port]) -> MetricTarget | None:
    """``{metric: queue_depth, target: 10, port: metrics, path: /metrics}``."""
    m = _mapping(ctx, node, path, APP_METRIC_KEYS, "an application metric")
    if m is None:
        return None
    ok = True
    name = _str(ctx, m["metric"][1], f"{path}.metric")
    if name is not None and not PROMETHEUS_NAME_RE.fullmatch(name):
        ctx.add(
            m["metric"][1],
            f"{path}.metric",
            f"{name!r} is not a Prometheus metric name",
            "use letters, digits, '_' and ':', not starting with a digit, e.g. queue_depth",
        )
        ok = False
    target: float | None = None
    if "target" not in m:
        ctx.add(
            node,
            f"{path}.target",
            "an application metric needs a target",
            "the gauge's value per replica to keep, e.g. target: 10",
        )
        ok = False
    else:
        target = _positive(ctx, m["target"][1], f"{path}.target", "metric", "target: 10")
    port = _metric_port(ctx, node, m, path, ports)
    mpath = "/metrics"
    if "path" in m:
        p = _str(ctx, m["path"][1], f"{path}.path")
        if p is None or not _HTTP_PATH.fullmatch(p):
            if p is not None:
                ctx.add(
                    m["path"][1],
                    f"{path}.path",
                    f"{p!r} is not a URL path",
                    "start it with / and leave out spaces, e.g. /metrics",
                )
            ok = False
        else:
            mpath = p
    if not ok or name is None or target is None or port is None:
        return None
    return MetricTarget("app", target, name=name, port=port, path=mpath)


def _metric(ctx: _Ctx, node: yaml.Node, path: str, ports: list[Port]) -> MetricTarget | None:
    """One entry of ``metrics:``: ``{cpu: 70%}`` and the like, or an application gauge."""
    if isinstance(node, yaml.MappingNode) and any(
        isinstance(k, yaml.ScalarNode) and k.value == "metric" for k, _ in node.value
    ):
        return _app_metric(ctx, node, path, ports)
    if not isinstance(node, yaml.MappingNode) or len(node.value) != 1:
        ctx.add(
            node,
            path,
            "each metric is a mapping of one name to its target"
            + ("" if isinstance(node, yaml.MappingNode) else f", not {_kind_of(node)}"),
            "write one metric per entry: metrics: [{cpu: 70%}, {rps: 100}]",
        )
        return None
    knode, vnode = node.value[0]
    kind = str(knode.value) if isinstance(knode, yaml.ScalarNode) else ""
    mpath = f"{path}.{kind}"
    if kind not in BUILTIN_METRICS:
        close = difflib.get_close_matches(kind, BUILTIN_METRICS, n=1)
        ctx.add(
            knode,
            mpath,
            f"unknown metric {kind!r}",
            (f"did you mean {close[0]!r}? " if close else "") + METRICS_HINT,
        )
        return None
    target: float | None
    if kind in ("cpu", "memory"):
        target = _utilisation(ctx, vnode, mpath, kind)
    elif kind == "p99":
        target = _duration(ctx, vnode, mpath, 3600)
        if target is not None and target <= 0:
            ctx.add(vnode, mpath, "the p99 target must be more than 0", "e.g. p99: 250ms")
            target = None
    else:
        target = _positive(ctx, vnode, mpath, kind, f"{kind}: {100 if kind == 'rps' else 10}")
    return None if target is None else MetricTarget(kind, target)  # type: ignore[arg-type]


def _metrics(
    ctx: _Ctx, node: yaml.Node, path: str, ports: list[Port]
) -> tuple[MetricTarget, ...] | None:
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        ctx.add(
            node,
            path,
            "metrics must be a list of at least one metric"
            + ("" if isinstance(node, yaml.SequenceNode) else f", not {_kind_of(node)}"),
            "e.g. metrics: [{cpu: 70%}, {rps: 100}]; " + METRICS_HINT,
        )
        return None
    out: list[MetricTarget] = []
    ok = True
    for i, item in enumerate(node.value):
        found = _metric(ctx, item, f"{path}[{i}]", ports)
        if found is None:
            ok = False
        elif any((t.kind, t.name) == (found.kind, found.name) for t in out):
            ctx.add(
                item,
                f"{path}[{i}]",
                f"the metric {found.label!r} is given twice",
                "keep one target per metric",
            )
            ok = False
        else:
            out.append(found)
    return tuple(out) if ok else None


def _policies(
    ctx: _Ctx, node: yaml.Node, path: str, down: bool
) -> tuple[ScalingPolicy, ...] | None:
    example = "e.g. policies: [{type: pods, value: 4, period: 15s}]"
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        ctx.add(
            node,
            path,
            "policies must be a list of at least one policy"
            + ("" if isinstance(node, yaml.SequenceNode) else f", not {_kind_of(node)}"),
            example + "; to forbid scaling this way, write select: disabled",
        )
        return None
    out: list[ScalingPolicy] = []
    ok = True
    for i, item in enumerate(node.value):
        ipath = f"{path}[{i}]"
        m = _mapping(ctx, item, ipath, POLICY_KEYS, "a scaling policy")
        if m is None:
            ok = False
            continue
        missing = [k for k in POLICY_KEYS if k not in m]
        if missing:
            ctx.add(item, ipath, f"a scaling policy needs {', '.join(missing)}", example)
            ok = False
            continue
        ptype = _one_of(ctx, m["type"][1], f"{ipath}.type", POLICY_TYPES, "policy type")
        hi = 100 if down and ptype == "percent" else 10_000
        hint = (
            "a percentage of the replicas from 1 to 100 (100 may remove them all in a period)"
            if hi == 100
            else "replicas (pods) or a percentage of the replicas (percent), at least 1"
        )
        value = _int(ctx, m["value"][1], f"{ipath}.value", 1, hi, hint)
        period = _duration_from(
            ctx, m["period"][1], f"{ipath}.period", 1, 1800, "the period", "e.g. 15s"
        )
        if ptype is None or value is None or period is None:
            ok = False
            continue
        out.append(ScalingPolicy(ptype, value, period))  # type: ignore[arg-type]
    return tuple(out) if ok else None


def _rules(
    ctx: _Ctx, node: yaml.Node, path: str, default: ScalingRules, down: bool
) -> ScalingRules | None:
    m = _mapping(ctx, node, path, RULES_KEYS, "scaling rules")
    if m is None:
        return None
    kw: dict[str, Any] = {}
    if "stabilization_window" in m:
        kw["stabilization_window"] = _duration(
            ctx, m["stabilization_window"][1], f"{path}.stabilization_window", 3600
        )
    if "select" in m:
        kw["select"] = _one_of(
            ctx, m["select"][1], f"{path}.select", SELECT_POLICIES, "policy selection"
        )
    if "policies" in m:
        kw["policies"] = _policies(ctx, m["policies"][1], f"{path}.policies", down)
    if any(v is None for v in kw.values()):
        return None
    return replace(default, **kw)


def _behavior(ctx: _Ctx, node: yaml.Node, path: str) -> Behavior | None:
    m = _mapping(ctx, node, path, BEHAVIOR_KEYS, "behavior")
    if m is None:
        return None
    kw: dict[str, Any] = {}
    for key, default, down in (
        ("scale_up", SCALE_UP_DEFAULT, False),
        ("scale_down", SCALE_DOWN_DEFAULT, True),
    ):
        if key in m:
            kw[key] = _rules(ctx, m[key][1], f"{path}.{key}", default, down)
    if any(v is None for v in kw.values()):
        return None
    return Behavior(**kw)


def _bounds(ctx: _Ctx, node: yaml.Node, path: str) -> tuple[int, int] | None:
    """``{cpu: 100m, memory: 64Mi}`` of the vertical recommender (0: no bound)."""
    m = _mapping(ctx, node, path, BOUND_KEYS, "bounds")
    if m is None:
        return None
    cpu = memory = 0
    ok = True
    if "cpu" in m:
        vnode = m["cpu"][1]
        try:
            cpu = parse_cpu(_scalar(vnode) if isinstance(vnode, yaml.ScalarNode) else [])
        except UnitError as e:
            ctx.add(vnode, f"{path}.cpu", str(e), "e.g. cpu: 100m or cpu: 2")
            ok = False
    if "memory" in m:
        vnode = m["memory"][1]
        try:
            memory = parse_size(
                _scalar(vnode) if isinstance(vnode, yaml.ScalarNode) else [], what="memory"
            )
        except UnitError as e:
            ctx.add(vnode, f"{path}.memory", str(e), "e.g. memory: 64Mi or memory: 1Gi")
            ok = False
    return (cpu, memory) if ok else None


def _vertical(ctx: _Ctx, node: yaml.Node, path: str) -> Vertical | None:
    m = _mapping(ctx, node, path, VERTICAL_KEYS, "vertical")
    if m is None:
        return None
    kw: dict[str, Any] = {}
    if "mode" in m:
        kw["mode"] = _one_of(ctx, m["mode"][1], f"{path}.mode", VERTICAL_MODES, "vertical mode")
    _bounded(ctx, m, path, kw, _fraction, VERTICAL_SHARES)
    _bounded(ctx, m, path, kw, _duration_from, VERTICAL_DURATIONS)
    for key in ("min", "max"):
        if key in m:
            found = _bounds(ctx, m[key][1], f"{path}.{key}")
            if found is None:
                kw[f"{key}_cpu"] = None
            else:
                kw[f"{key}_cpu"], kw[f"{key}_memory"] = found
    if any(v is None for v in kw.values()):
        return None
    for res, fmt in (("cpu", format_cpu), ("memory", format_size)):
        lo, hi = kw.get(f"min_{res}", 0), kw.get(f"max_{res}", 0)
        if lo and hi and lo > hi:
            ctx.add(
                m["min"][1],
                f"{path}.min.{res}",
                f"the least {res} ({fmt(lo)}) is more than the most ({fmt(hi)})",
                f"make vertical.min.{res} at most vertical.max.{res}",
            )
            return None
    return Vertical(**kw)


def _autoscale(ctx: _Ctx, node: yaml.Node, path: str, ports: list[Port]) -> Autoscale | None:
    """A service's ``autoscale:`` block. A block with only ``vertical:`` sets no replica
    bounds (``Autoscale``'s defaults, never read: the spec's ``replicas`` is the count), so
    that a change of ``replicas`` is not also a change of the policy."""
    m = _mapping(ctx, node, path, AUTOSCALE_KEYS, "autoscale")
    if m is None:
        return None
    before = len(ctx.issues)
    kw: dict[str, Any] = {}
    horizontal = any(k in m for k in HORIZONTAL_KEYS)
    if not horizontal and "vertical" not in m:
        ctx.add(node, path, "autoscale is empty", AUTOSCALE_EXAMPLE)
        return None
    lo = hi = None
    if "min" in m:
        lo = _int(
            ctx,
            m["min"][1],
            f"{path}.min",
            0,
            MAX_REPLICAS,
            f"the fewest replicas, 0 (scale to zero when idle) to {MAX_REPLICAS}",
        )
    if "max" in m:
        hi = _int(
            ctx,
            m["max"][1],
            f"{path}.max",
            -(2**63),
            2**63,
            f"the most replicas, 1 to {MAX_REPLICAS}",
        )
        if hi is not None and not 1 <= hi <= MAX_REPLICAS:
            ctx.add(
                m["max"][1],
                f"{path}.max",
                f"max must be from 1 to {MAX_REPLICAS}, not {hi}",
                "max is the most replicas the autoscaler may run; for none when idle, "
                "use min: 0; to stop the service, `elastin stop`",
            )
            hi = None
    elif horizontal:
        ctx.add(
            node, f"{path}.max", "autoscale needs max, the most replicas to run", AUTOSCALE_EXAMPLE
        )
    if lo is not None and hi is not None and lo > hi:
        ctx.add(
            m["min"][1],
            f"{path}.min",
            f"min ({lo}) is more than max ({hi})",
            "make min at most max",
        )
    if horizontal:
        kw["min"] = 1 if "min" not in m else lo
        kw["max"] = hi
        kw["metrics"] = (MetricTarget("cpu", 0.8),)  # HPA's default without metrics
    if "metrics" in m:
        kw["metrics"] = _metrics(ctx, m["metrics"][1], f"{path}.metrics", ports)
    if "behavior" in m:
        kw["behavior"] = _behavior(ctx, m["behavior"][1], f"{path}.behavior")
    _bounded(ctx, m, path, kw, _fraction, AUTOSCALE_SHARES)
    _bounded(ctx, m, path, kw, _duration_from, AUTOSCALE_DURATIONS)
    if "vertical" in m:
        kw["vertical"] = _vertical(ctx, m["vertical"][1], f"{path}.vertical")
    if kw.get("min") == 0:
        _scale_to_zero(ctx, m["min"][1], f"{path}.min", ports)
    metrics, vertical = kw.get("metrics") or (), kw.get("vertical")
    resources = [t.kind for t in metrics if t.kind in ("cpu", "memory")]
    if vertical is not None and vertical.mode == "auto" and resources:
        ctx.add(
            m["vertical"][1],
            f"{path}.vertical.mode",
            f"vertical mode auto with a horizontal {resources[0]} target: resizing the request "
            f"moves the {resources[0]} utilisation the horizontal autoscaler follows, and "
            "the two fight",
            "follow rps, inflight, p99 or an application metric horizontally, or use "
            "vertical mode: recommend",
        )
    if len(ctx.issues) != before or any(v is None for v in kw.values()):
        return None
    return Autoscale(**kw)


def _scale_to_zero(ctx: _Ctx, node: yaml.Node, path: str, ports: list[Port]) -> None:
    """``min: 0`` needs every port to be HTTP or gRPC: the mesh holds a request there while a
    replica starts; a TCP connection cannot be held that way."""
    other = [p for p in ports if p.protocol not in SCALE_TO_ZERO_PROTOCOLS]
    if ports and not other:
        return
    why = (
        "the service declares no ports"
        if not ports
        else f"port {other[0].name!r} is {other[0].protocol}"
    )
    ctx.add(
        node,
        path,
        f"min: 0 (scale to zero) needs HTTP or gRPC ports, where the mesh holds a request "
        f"while a replica starts: {why}",
        "use min: 1, or serve only http, http2 or grpc ports",
    )


def _autoscale_replicas(
    ctx: _Ctx,
    m: dict[str, tuple[yaml.Node, yaml.Node]],
    path: str,
    ports: list[Port],
    kw: dict[str, Any],
) -> None:
    """Parse a service's ``autoscale:`` into ``kw``; ``replicas`` checked against its bounds,
    or, left out, ``max(min, 1)``."""
    given = kw.get("replicas", 1)
    auto = _autoscale(ctx, m["autoscale"][1], f"{path}.autoscale", ports)
    if auto is None:
        return
    kw["autoscale"] = auto
    if not auto.horizontal:
        return
    if "replicas" not in m:
        kw["replicas"] = max(auto.min, 1)
    elif isinstance(given, int) and not auto.min <= given <= auto.max:
        ctx.add(
            m["replicas"][1],
            f"{path}.replicas",
            f"replicas {given} is outside the autoscale range {auto.min}..{auto.max}",
            "leave replicas out (the service starts with max(min, 1) and the autoscaler "
            "takes it from there), or give a count from min to max",
        )


def _cycle(graph: dict[str, tuple[str, ...]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for d in graph.get(n, ()):
            if state.get(d) == 1:
                return [*stack[stack.index(d) :], d]
            if d in graph and state.get(d) is None:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if state.get(n) is None:
            found = visit(n)
            if found:
                return found
    return None


def _references(
    top: dict[str, tuple[yaml.Node, yaml.Node]],
) -> Iterator[tuple[str, str, str, int, yaml.Node]]:
    """Every ``depends_on`` / ``upstreams`` entry: (section, workload, field, index, node)."""
    for section in ("services", "jobs"):
        if section not in top or not isinstance(top[section][1], yaml.MappingNode):
            continue
        for k, v in top[section][1].value:
            if not isinstance(v, yaml.MappingNode):
                continue
            for fk, fv in v.value:
                if fk.value in ("depends_on", "upstreams") and isinstance(fv, yaml.SequenceNode):
                    for i, item in enumerate(fv.value):
                        yield section, str(k.value), str(fk.value), i, item


def parse_spec(text: str, file: str = "", base_dir: str = "") -> Application:
    """Parse and validate a spec; raise ``SpecError`` listing every problem.

    ``base_dir`` is the spec file's directory: relative workdirs resolve against it, and it is
    a task's workdir when the spec names none ("": the instance's own directory)."""
    ctx = _Ctx(file)
    size = len(text.encode(errors="replace"))
    if size > MAX_SPEC_BYTES:
        raise SpecError([_too_big(size, file)])
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        raise SpecError(
            [SpecIssue("", "nested too deeply", "a spec needs a few levels, not thousands", file)]
        ) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        ctx.issues.append(
            SpecIssue(
                "",
                f"not valid YAML: {e.problem or e.context}",
                "check the indentation and the brackets and quotes around this line",
                file,
                (mark.line + 1) if mark else 0,
                (mark.column + 1) if mark else 0,
            )
        )
        raise SpecError(ctx.issues) from None
    except yaml.YAMLError as e:
        raise SpecError([SpecIssue("", f"not valid YAML: {e}", "", file)]) from None
    if root is None:
        raise SpecError(
            [
                SpecIssue(
                    "",
                    "the spec is empty",
                    "start with `app: NAME` and a `services:` section",
                    file,
                )
            ]
        )
    top = _mapping(ctx, root, "", TOP_KEYS, "the spec")
    if top is None:
        raise SpecError(ctx.issues)
    name = ""
    if "app" not in top:
        ctx.add(root, "app", "the spec needs an application name", "add `app: my-app` at the top")
    else:
        found = _str(ctx, top["app"][1], "app")
        if found is not None:  # "" too: an application needs a name
            _name(ctx, top["app"][1], "app", found, "application name", "shop")
        name = found or ""
    workloads: list[Workload] = []
    names: dict[str, str] = {}
    declared: list[str] = []
    for section, wtype in (("services", "service"), ("jobs", "job")):
        if section not in top:
            continue
        m = _mapping(ctx, top[section][1], section, (), section)
        if m is None:
            continue
        for wname, (knode, vnode) in m.items():
            if wname in names:
                ctx.add(
                    knode,
                    f"{section}.{wname}",
                    f"{wname!r} is already the name of a {names[wname]}",
                    "give every service and job its own name",
                )
                continue
            names[wname] = wtype
            declared.append(wname)
            w = _workload(ctx, wname, knode, vnode, wtype, base_dir)
            if w is not None:
                workloads.append(w)
    if not names and not any(i.path.startswith(("services", "jobs")) for i in ctx.issues):
        ctx.add(
            root,
            "services",
            "the spec has no services and no jobs",
            "add a `services:` or `jobs:` section",
        )
    # references between workloads, checked once every name is known
    seen_refs: set[tuple[str, str, str]] = set()
    for section, wname, field_, i, item in _references(top):
        ref = str(item.value) if isinstance(item, yaml.ScalarNode) else ""
        p = f"{section}.{wname}.{field_}[{i}]"
        if (wname, field_, ref) in seen_refs:
            ctx.add(item, p, f"{ref!r} is named twice", "name each one once")
            continue
        seen_refs.add((wname, field_, ref))
        if ref == wname:
            what = "depends on itself" if field_ == "depends_on" else "cannot be its own upstream"
            ctx.add(item, p, f"{ref!r} {what}", "remove it")
        elif field_ == "depends_on" and ref not in names:
            close = difflib.get_close_matches(ref, declared, n=1)
            ctx.add(
                item,
                p,
                f"no service or job named {ref!r}",
                (f"did you mean {close[0]!r}? " if close else "")
                + f"declared: {', '.join(declared)}",
            )
        elif field_ == "upstreams" and names.get(ref) != "service":
            services = [n for n, t in names.items() if t == "service"]
            close = difflib.get_close_matches(ref, services, n=1)
            ctx.add(
                item,
                p,
                f"no service named {ref!r} to call",
                (f"did you mean {close[0]!r}? " if close else "")
                + "upstreams name services of this application",
            )
        elif field_ == "upstreams":
            target = next((w for w in workloads if w.name == ref), None)
            if target is not None and not target.ports:
                ctx.add(
                    item, p, f"service {ref!r} declares no ports to call", f"add `ports:` to {ref}"
                )
    cycle = _cycle({w.name: tuple(d for d in w.depends_on if d != w.name) for w in workloads})
    if cycle:
        ctx.add(
            root,
            "depends_on",
            "dependency cycle: " + " -> ".join(cycle),
            "remove one of these depends_on entries",
        )
    if ctx.issues:
        ctx.issues.sort(key=lambda i: (i.line, i.column))
        raise SpecError(ctx.issues)
    return Application(name=name, workloads=tuple(workloads))


def _too_big(size: int, file: str) -> SpecIssue:
    return SpecIssue(
        "",
        f"the spec is {size} bytes, over the limit of {MAX_SPEC_BYTES} (1 MiB)",
        "a spec describes workloads; put large data (configuration, keys) in files beside it "
        "and pass their paths",
        file,
    )


def load_spec(path: str | os.PathLike[str]) -> Application:
    """Read and parse a spec file; relative workdirs resolve against its directory, which is
    also a task's default workdir."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise SpecError([_too_big(size, str(path))])
        text = p.read_text()
    except OSError as e:
        raise SpecError(
            [SpecIssue("", f"cannot read the file: {e.strerror}", "check the path", str(path))]
        ) from None
    except UnicodeDecodeError:
        raise SpecError([SpecIssue("", "the file is not UTF-8 text", "", str(path))]) from None
    return parse_spec(text, file=str(path), base_dir=str(p.resolve().parent))
