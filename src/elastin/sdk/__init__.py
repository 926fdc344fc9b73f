"""The Python SDK: ``AutomationEngine``, ``ContainerEngine`` and ``VirtualizationEngine``
(see ``engines``), also importable as ``from elastin import AutomationEngine``; and the mesh
client (``MeshClient.resolve`` / ``watch``, ``upstream``; see ``mesh``)."""

from elastin.sdk.engines import (
    AutomationEngine,
    ContainerEngine,
    EngineError,
    VirtualizationEngine,
)
from elastin.sdk.mesh import MeshClient, ServiceEndpoint, upstream

__all__ = [
    "AutomationEngine",
    "ContainerEngine",
    "EngineError",
    "MeshClient",
    "ServiceEndpoint",
    "VirtualizationEngine",
    "upstream",
]
