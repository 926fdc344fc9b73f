"""Elastin: elastic compute and a service mesh for Python shops.

The package is layered (see docs/architecture.md): ``model`` at the bottom, pure logic
(``store``, ``scheduler``, ``client``) above it, and the running parts (``server``, ``agent``)
on top, with ``sdk`` and ``cli`` as the user-facing faces.

The SDK's engines are importable from the top level::

    from elastin import AutomationEngine
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["AutomationEngine", "ContainerEngine", "VirtualizationEngine", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from elastin.sdk.engines import AutomationEngine, ContainerEngine, VirtualizationEngine


def __getattr__(name: str) -> Any:
    # Lazy so that ``import elastin.model`` stays free of the SDK's dependencies.
    if name in ("AutomationEngine", "ContainerEngine", "VirtualizationEngine"):
        from elastin.sdk import engines

        return getattr(engines, name)
    raise AttributeError(f"module 'elastin' has no attribute {name!r}")
