"""``from elastin.automation import AutomationEngine``: the SDK's engine for tasks (processes
in their own cgroups) under the module name of the project's seed; a thin re-export of
``elastin.sdk.engines`` (docs/sdk.md)."""

from elastin.sdk.engines import AutomationEngine, EngineError

__all__ = ["AutomationEngine", "EngineError"]
