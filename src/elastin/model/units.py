"""Parsing and formatting of resource quantities.

cpu is kept as integer millicores: ``1`` / ``"1"`` / ``1.5`` are cores, ``"500m"`` is
millicores. Sizes are kept as integer bytes: ``"128Mi"``, ``"4Gi"``, ``"1G"``, ``"512Ki"``,
``"100M"``; a bare number is MiB (the SDK's and spec's convention for memory and disk).
"""

from __future__ import annotations

import re

from elastin.model.errors import UnitError

MIB = 1024 * 1024

_SIZE_UNITS: dict[str, int] = {
    "": MIB,  # bare numbers are MiB
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
    "ti": 1024**4,
    "tib": 1024**4,
}

_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")
_CPU_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(m?)\s*$")


MAX_QUANTITY = 1 << 62  # far above any machine; keeps every quantity a sane integer


def _whole(value: float, what: str) -> int:
    """``value`` rounded, refused when it is not finite or absurdly large."""
    if not value < MAX_QUANTITY:  # also false for nan and inf
        raise UnitError(f"{what} is too large")
    return round(value)


def parse_cpu(value: object) -> int:
    """Return millicores for ``value`` (cores as a number or string, or ``"500m"``)."""
    if isinstance(value, bool):
        raise UnitError(f"cpu must be a number of cores or millicores like '500m', not {value!r}")
    if isinstance(value, int | float):
        if value != value or value in (float("inf"), float("-inf")):
            raise UnitError(f"cpu must be a finite number, not {value!r}")
        if value < 0:
            raise UnitError(f"cpu must not be negative, got {value!r}")
        return _whole(value * 1000, "cpu")
    if isinstance(value, str):
        m = _CPU_RE.match(value)
        if not m:
            raise UnitError(
                f"cpu {value!r} is not a quantity; use cores (1, 0.5) or millicores ('500m')"
            )
        number = float(m.group(1))
        return _whole(number if m.group(2) == "m" else number * 1000, "cpu")
    raise UnitError(f"cpu must be a number or a string like '500m', not {type(value).__name__}")


def parse_size(value: object, *, what: str = "size") -> int:
    """Return bytes for ``value`` (``"128Mi"``, ``"4Gi"``, ``"1G"``; a bare number is MiB)."""
    if isinstance(value, bool):
        raise UnitError(f"{what} must be a size like '128Mi', not {value!r}")
    if isinstance(value, int | float):
        if value != value or value in (float("inf"), float("-inf")):
            raise UnitError(f"{what} must be a finite number, not {value!r}")
        if value < 0:
            raise UnitError(f"{what} must not be negative, got {value!r}")
        return _whole(value * MIB, what)
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if not m:
            raise UnitError(f"{what} {value!r} is not a size; write it like '128Mi' or '4Gi'")
        unit = m.group(2).lower()
        if unit not in _SIZE_UNITS:
            raise UnitError(
                f"{what} {value!r} has an unknown unit {m.group(2)!r}; "
                "use Ki, Mi, Gi, Ti (powers of 1024) or K, M, G, T (powers of 1000)"
            )
        return _whole(float(m.group(1)) * _SIZE_UNITS[unit], what)
    raise UnitError(f"{what} must be a number or a string like '128Mi', not {type(value).__name__}")


def format_cpu(millis: int | float) -> str:
    """``1500`` -> ``"1.5"``, ``250`` -> ``"250m"``."""
    if millis >= 1000 or millis == 0:
        cores = millis / 1000
        return f"{cores:g}"
    return f"{millis:.0f}m"


def format_size(nbytes: int | float) -> str:
    """Bytes in the largest binary unit that keeps the number >= 1: ``"128Mi"``, ``"1.5Gi"``."""
    value = float(nbytes)
    for unit in ("", "Ki", "Mi", "Gi", "Ti"):
        if abs(value) < 1024 or unit == "Ti":
            if unit == "":
                return f"{value:.0f}B"
            return f"{value:.1f}{unit}".replace(".0" + unit, unit)
        value /= 1024
    return f"{value:.1f}Ti"  # pragma: no cover
