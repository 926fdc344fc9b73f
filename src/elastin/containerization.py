"""``from elastin.containerization import ContainerEngine``: the SDK's engine for containers
under the module name of the project's seed; a thin re-export of ``elastin.sdk.engines``
(docs/sdk.md)."""

from elastin.sdk.engines import ContainerEngine, EngineError

__all__ = ["ContainerEngine", "EngineError"]
