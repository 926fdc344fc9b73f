"""The CLI's unit tests run its commands with click's ``CliRunner`` against a scripted API
(``cli_support.FakeApi`` behind ``httpx.MockTransport``): no server process, no network."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from cli_support import URL, FakeApi
from click.testing import CliRunner, Result

from elastin.cli import common
from elastin.cli.main import cli


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeApi:
    """A scripted API that ``client()`` talks to; ``ELASTIN_ADDR`` says a server runs."""
    fake = FakeApi()
    monkeypatch.setattr(common, "connect", fake.client)
    monkeypatch.setenv("ELASTIN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ELASTIN_ADDR", URL)
    monkeypatch.setenv("ELASTIN_TOKEN", "tok")
    return fake


@pytest.fixture
def run() -> Callable[..., Result]:
    def invoke(*args: str) -> Result:
        return CliRunner().invoke(cli, list(args))

    return invoke
