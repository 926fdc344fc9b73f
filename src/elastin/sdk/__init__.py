"""The Python SDK: ``AutomationEngine``, ``ContainerEngine`` and ``VirtualizationEngine``
(see ``engines``), also importable as ``from elastin import AutomationEngine``."""

from elastin.sdk.engines import (
    AutomationEngine,
    ContainerEngine,
    EngineError,
    VirtualizationEngine,
)

__all__ = ["AutomationEngine", "ContainerEngine", "EngineError", "VirtualizationEngine"]
