"""Exceptions of the scheduler package.

Hierarchy::

    SchedulerError              root of everything raised by elastin.scheduler
     └── InvalidOptions         SchedulerOptions with a value out of range

The scheduler itself never raises for an unplaceable workload: it returns a pending
allocation with a reason instead. Errors here are programming or configuration errors.
"""

from __future__ import annotations


class SchedulerError(Exception):
    """Root of all errors raised by ``elastin.scheduler``."""


class InvalidOptions(SchedulerError, ValueError):
    """``SchedulerOptions`` holds a value the scheduler cannot use."""
