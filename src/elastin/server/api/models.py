"""The API's request and response bodies, typed, so that ``/v1/openapi.json`` documents
every one of them (and a client can be generated from it).

Domain objects (``Allocation``, ``Node``, ``AppRecord``, ``Event``, ``MeshSnapshot``, ...)
are frozen dataclasses of ``elastin.model`` and are used as they are: pydantic reads their
type hints. Views that add a field to one (an allocation with its ``name``, a node with its
measured ``usage``) are pydantic models made from the dataclass's fields (``extend``), so
they cannot drift from it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, get_type_hints

from pydantic import BaseModel, Field, create_model

from elastin.mesh.model.registry import ServiceEntry
from elastin.mesh.model.traffic import ClusterStats
from elastin.model.cluster import Allocation, AllocStatus, Node, Usage
from elastin.model.resources import Resources
from elastin.model.settled import WorkloadProgress
from elastin.server.apps import WorkloadChange


def extend(model_name: str, base: type, doc: str, /, **extra: Any) -> type[BaseModel]:
    """A pydantic model with every field of the dataclass ``base`` plus ``extra``
    (``name=(type, default)``)."""
    hints = get_type_hints(base)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(base):
        if f.default is not dataclasses.MISSING:
            fields[f.name] = (hints[f.name], f.default)
        elif f.default_factory is not dataclasses.MISSING:
            fields[f.name] = (hints[f.name], Field(default_factory=f.default_factory))
        else:
            fields[f.name] = (hints[f.name], ...)
    model: type[BaseModel] = create_model(model_name, __doc__=doc, **fields, **extra)
    return model


AllocationView = extend(
    "AllocationView",
    Allocation,
    "An allocation (one instance of a workload), with its name and measured usage.",
    name=(str, Field(description="<app>.<workload>[<index>]")),
)
NodeView = extend(
    "NodeView", Node, "A node with its measured usage.", usage=(Usage, Field(default=Usage()))
)

EventTuple = tuple[str, str, str, str]


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer."""

    error: str = Field(description="NotFound, Conflict, Invalid, Unauthorized, ...")
    message: str
    hint: str = ""
    issues: list[dict[str, Any]] = Field(
        default_factory=list, description="located spec errors (file, line, field, hint)"
    )


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": what}
    for code, what in (
        (401, "no or wrong token"),
        (404, "no such application, service, allocation or node"),
        (409, "the request conflicts with the current state; try again"),
        (422, "the request is invalid (a spec's located issues are in `issues`)"),
    )
}
"""The error answers every route documents."""


# --- requests --------------------------------------------------------------------------
class ApplyBody(BaseModel):
    spec: str = Field(description="the spec file's YAML text")
    file: str = Field("", description="file name, for error messages")
    base_dir: str = Field("", description="directory relative workdirs resolve against")
    dry_run: bool = Field(False, description="only compute the diff; change nothing")


class ScaleBody(BaseModel):
    replicas: int


class StopBody(BaseModel):
    ref: str | None = Field(None, description="a service or job (`name` or `app/name`); all")


class NodeBody(BaseModel):
    node: Node


class HeartbeatBody(BaseModel):
    usage: dict[str, Usage] = Field(default_factory=dict, description="allocation -> usage")
    node_usage: Usage | None = None
    mesh: dict[str, ClusterStats] = Field(
        default_factory=dict, description="mesh cluster -> its proxy's counters on this node"
    )


class Limits(BaseModel):
    cpu: int = Field(ge=0, description="millicores")
    memory: int = Field(ge=0, description="bytes")


class ResizeRefusedBody(BaseModel):
    """A resize in place the agent could not apply: the allocation's resources go back to
    ``running`` (what the instance runs with) when they are still ``refused``."""

    refused: Limits
    running: Limits


class StatusBody(BaseModel):
    """An agent's report on one allocation; absent fields stay as they are."""

    status: AllocStatus | None = None
    reason: str | None = None
    exit_code: int | None = None
    restarts: int | None = None
    pid: int | None = None
    ports: list[tuple[str, int]] | None = None
    healthy: bool | None = None
    events: list[EventTuple] = Field(
        default_factory=list, description="(type, subject, message, level)"
    )
    resize_refused: ResizeRefusedBody | None = None


class BatchStatusBody(BaseModel):
    reports: dict[str, StatusBody]


# --- responses -------------------------------------------------------------------------
class ApplyAnswer(BaseModel):
    app: str
    changes: list[WorkloadChange]
    dry_run: bool
    generation: int
    revision: int
    changed: bool


class SettlementAnswer(BaseModel):
    app: str
    state: Literal["settling", "settled", "failed"]
    workloads: list[WorkloadProgress]
    waiting: bool = Field(description="every unsettled instance is pending with a reason")
    summary: str
    done: bool = Field(description="settled or failed: a wait can end")
    index: int = Field(description="pass it back as `index` to wait for the next change")


class Deleted(BaseModel):
    deleted: str
    revision: int


class ServiceSummary(BaseModel):
    app: str
    name: str
    type: Literal["service", "job"]
    kind: str
    desired: int
    stopped: bool
    running: int
    pending: int
    complete: int
    failed: int
    completions: int | None
    priority: int
    resources: Resources
    version: int
    user: str = Field(
        description='who its instances run as: "" a dynamic user each, "root", or the spec\'s user'
    )


class ServiceDetail(BaseModel):
    app: str
    workload: dict[str, Any] = Field(description="the workload as applied (see docs/spec.md)")
    allocations: list[AllocationView]  # type: ignore[valid-type]


class Scaled(BaseModel):
    app: str
    generation: int


class Stopped(BaseModel):
    stopped: list[str]


class NodeStatus(BaseModel):
    status: Literal["ready", "down"]


class NodeAllocations(BaseModel):
    index: int = Field(description="pass it back as `index` to wait for the next change")
    allocations: list[Allocation]


class Registry(BaseModel):
    index: int
    services: list[ServiceEntry]


class TrafficRow(BaseModel):
    cluster: str
    app: str
    service: str
    port: str
    mode: str
    nodes: list[str]
    requests: int
    errors: int
    connect_errors: int
    retries: int
    in_flight: int
    endpoints_up: int
    avg_response_ms: int


class Traffic(BaseModel):
    services: list[TrafficRow]


class Converged(BaseModel):
    version: int
    converged: bool
    pending: list[str]


class Acked(BaseModel):
    version: int


class BatchResults(BaseModel):
    results: dict[str, str] = Field(description="allocation -> `ok` or why not")


class ServerStatus(BaseModel):
    version: str
    revision: int
    data_dir: str
    pid: int
