"""``from elastin.virtualization import VirtualizationEngine``: the SDK's engine for virtual
machines under the module name of the project's seed; a thin re-export of
``elastin.sdk.engines`` (docs/sdk.md)."""

from elastin.sdk.engines import EngineError, VirtualizationEngine

__all__ = ["EngineError", "VirtualizationEngine"]
