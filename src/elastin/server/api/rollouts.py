"""Routes for a workload's versions: rollout status and history, undo, promote; restart a
service (a rolling update to a new version with the same spec); run a job again.

Translation only: each route calls one method of ``Apps`` (``server/apps.py``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from elastin.server.api.models import ERRORS, Scaled
from elastin.server.cluster import Cluster


class UndoBody(BaseModel):
    to: int = Field(0, ge=0, description="the version to go back to; 0 = the previous one")


def rollout_routes(cluster: Cluster) -> APIRouter:
    r = APIRouter(responses=ERRORS)
    apps = cluster.apps

    @r.get("/v1/rollouts/{ref:path}")
    async def rollout_status(ref: str) -> dict[str, Any]:
        """A workload's current version, how its rollout stands and the versions kept."""
        return await apps.rollout(ref)

    @r.post("/v1/rollouts/{ref:path}/undo", response_model=Scaled)
    async def rollout_undo(ref: str, body: UndoBody) -> dict[str, Any]:
        rec = await apps.undo(ref, body.to)
        return {"app": rec.app.name, "generation": rec.generation}

    @r.post("/v1/rollouts/{ref:path}/promote", response_model=Scaled)
    async def rollout_promote(ref: str) -> dict[str, Any]:
        rec = await apps.promote(ref)
        return {"app": rec.app.name, "generation": rec.generation}

    @r.post("/v1/restart/{ref:path}", response_model=Scaled)
    async def restart(ref: str) -> dict[str, Any]:
        rec = await apps.redeploy(ref, "restart")
        return {"app": rec.app.name, "generation": rec.generation}

    @r.post("/v1/jobs/{ref:path}/run", response_model=Scaled)
    async def job_run(ref: str) -> dict[str, Any]:
        rec = await apps.redeploy(ref, "run")
        return {"app": rec.app.name, "generation": rec.generation}

    return r
