"""``Resources``: an amount of cpu (millicores), memory and disk (bytes).

Used for one instance's request, for capacities, for totals and for measured usage.
The arithmetic serves the accounting formulas of the scheduler (R_total = Σ R_i × V_i, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

from elastin.model.units import format_cpu, format_size, parse_cpu, parse_size


@dataclass(frozen=True, slots=True)
class Resources:
    cpu: int = 0  # millicores
    memory: int = 0  # bytes
    disk: int = 0  # bytes

    @classmethod
    def parse(cls, cpu: object = 0, memory: object = 0, disk: object = 0) -> Resources:
        """Build from user quantities (``cpu=1``, ``memory='128Mi'``; bare memory is MiB)."""
        return cls(
            cpu=parse_cpu(cpu),
            memory=parse_size(memory, what="memory"),
            disk=parse_size(disk, what="disk"),
        )

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.cpu + other.cpu, self.memory + other.memory, self.disk + other.disk)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.cpu - other.cpu, self.memory - other.memory, self.disk - other.disk)

    def __mul__(self, n: int) -> Resources:
        return Resources(self.cpu * n, self.memory * n, self.disk * n)

    __rmul__ = __mul__

    def fits_in(self, available: Resources) -> bool:
        return (
            self.cpu <= available.cpu
            and self.memory <= available.memory
            and self.disk <= available.disk
        )

    def shortfall(self, available: Resources) -> list[str]:
        """Names of the dimensions in which ``self`` does not fit ``available``."""
        out = []
        if self.cpu > available.cpu:
            out.append("cpu")
        if self.memory > available.memory:
            out.append("memory")
        if self.disk > available.disk:
            out.append("disk")
        return out

    def human(self) -> str:
        return (
            f"cpu {format_cpu(self.cpu)}, mem {format_size(self.memory)}, "
            f"disk {format_size(self.disk)}"
        )


def describe_resize(old: Resources, new: Resources) -> str:
    """``cpu 200m → 500m, memory 64Mi → 128Mi``: the dimensions that changed (the server's
    vertical autoscaler and the agent's runner say a resize so)."""
    parts = []
    if old.cpu != new.cpu:
        parts.append(f"cpu {format_cpu(old.cpu)} → {format_cpu(new.cpu)}")
    if old.memory != new.memory:
        parts.append(f"memory {format_size(old.memory)} → {format_size(new.memory)}")
    return ", ".join(parts) or "unchanged"
