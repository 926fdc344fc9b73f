"""Elastin: elastic compute and a service mesh for Python shops.

The package is layered (see docs/architecture.md; import-linter keeps it so): ``model``,
``clock``, ``auth`` and ``metrics`` at the bottom; pure logic (``store``, ``scheduler``,
``mesh.model``) and the ``client`` above them; the running parts (``mesh.haproxy``,
``mesh.dns``, ``server``, ``agent``) on top of those, with ``sdk`` and ``cli`` as the
user-facing faces and ``testing`` holding the public fakes.

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
