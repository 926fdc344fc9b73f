"""Builders shared by the agent's unit tests (imported by module name, not a test)."""

from __future__ import annotations

from pathlib import Path

from elastin.agent.agent import Agent, AgentConfig
from elastin.testing import FakeClock, FakeDriver


def offline_agent(tmp_path: Path, driver: FakeDriver | None = None) -> Agent:
    """An agent on a fake driver and a fake clock, without mesh, DNS, metrics or a server
    to reach (its client is never used unless a test replaces it)."""
    cfg = AgentConfig(
        data_dir=tmp_path,
        server_url="http://127.0.0.1:9",
        token="t",
        mesh=False,
        dns_port=None,
        metrics_port=None,
    )
    return Agent(cfg, {"task": driver or FakeDriver()}, clock=FakeClock(autojump=True))
