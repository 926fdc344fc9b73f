"""Workload drivers: ``base`` (the protocol), ``task`` (processes in cgroups),
``cgroups`` (v1 and v2 cgroup management); container and vm drivers follow."""
