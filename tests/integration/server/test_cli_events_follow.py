"""``elastin events --service NAME -f`` against a real server (``elastin server`` in a process
of its own, no agent): after the recent matching events it follows from the newest event of
all, as ``events -f`` does without a filter — not from revision 0 over and over until one
matches (issue #13) — and prints a matching event that happens meanwhile, once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from elastin.cli import views
from elastin.cli.main import cli
from elastin.client.http import Client

pytestmark = pytest.mark.integration
PAUSE = time.sleep  # the follower's time.sleep is replaced while it runs


def spec(app: str, *services: str) -> str:
    body = "".join(
        f"  {s}:\n    command: python3 -m http.server\n    resources: {{cpu: 100m, memory: 32Mi}}\n"
        for s in services
    )
    return f"app: {app}\nservices:\n{body}"


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Client]:
    """A real server on a free loopback port; the CLI in this process finds it through
    ``ELASTIN_DATA_DIR``."""
    data = tmp_path / "data"
    env = {**os.environ, "ELASTIN_DATA_DIR": str(data)}
    env.pop("ELASTIN_ADDR", None)
    env.pop("ELASTIN_TOKEN", None)
    log = open(tmp_path / "server.log", "ab")  # noqa: SIM115 - the child's
    proc = subprocess.Popen(
        [sys.executable, "-m", "elastin.cli.main", "server", "--port", "0"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    try:
        info = data / "server.json"
        deadline = time.monotonic() + 30
        while not (info.exists() and json.loads(info.read_text() or "{}").get("pid") == proc.pid):
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        monkeypatch.setenv("ELASTIN_DATA_DIR", str(data))
        monkeypatch.delenv("ELASTIN_ADDR", raising=False)
        monkeypatch.delenv("ELASTIN_TOKEN", raising=False)
        url = json.loads(info.read_text())["url"]
        with Client(url, (data / "token").read_text().strip()) as c:
            yield c
    finally:
        proc.terminate()
        proc.wait(30)


def placed(c: Client, app: str, *services: str) -> int:
    """Apply ``spec(app, *services)`` and wait until the server has recorded each service's
    pending allocation (no node: the applier says why it waits); the newest event's rev."""
    c.apply(spec(app, *services))
    deadline = time.monotonic() + 30
    while True:
        subjects = [e["subject"] for e in c.events(0, 0)]
        if all(any(x.startswith(f"{app}.{s}[") for x in subjects) for s in services):
            return int(c.events(0, 1)[-1]["rev"])
        assert time.monotonic() < deadline, subjects
        PAUSE(0.05)


def follow(
    c: Client, monkeypatch: pytest.MonkeyPatch, service: str, meanwhile: str
) -> tuple[str, list[int]]:
    """``elastin events --service SERVICE -f`` for two polls: app ``meanwhile`` with a
    service SERVICE is placed before the first; Ctrl-C before the third. (its output, the
    ``since`` of each question about SERVICE)."""
    asked: list[int] = []
    real = Client.events

    def events(self: Client, since: int = 0, limit: int = 200, service: str = "") -> Any:
        if service:
            asked.append(since)
        return real(self, since, limit, service)

    polls = [0]

    def sleep(_: float) -> None:
        polls[0] += 1
        if polls[0] == 1:
            placed(c, meanwhile, service)
        if polls[0] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(Client, "events", events)
    monkeypatch.setattr(views.time, "sleep", sleep)
    res = CliRunner().invoke(cli, ["events", "--service", service, "-f"])
    assert res.exit_code == 0, res.output
    return res.output, asked


def test_a_filtered_follow_starts_from_the_newest_event(
    server: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    placed(server, "shop", "web", "api")
    newest = placed(server, "other", "db")  # events after web's last one
    web = [e for e in server.events(0, 0) if "web" in e["subject"]]
    assert web and web[-1]["rev"] < newest
    out, asked = follow(server, monkeypatch, "web", "late")
    assert asked[0] == 0 and len(asked) == 3, asked  # the recent matching ones, two polls
    assert all(since >= newest for since in asked[1:]), asked
    assert out.count("shop.web[0]") == 1 and out.count("late.web[0]") == 1, out


def test_a_filtered_follow_prints_a_new_match_once(
    server: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    newest = placed(server, "shop", "web")
    out, asked = follow(server, monkeypatch, "ghost", "haunt")
    assert "no service or job named 'ghost'" in out
    assert asked[0] == 0 and len(asked) == 3, asked
    assert all(since >= newest for since in asked[1:]), asked
    assert out.count("haunt.ghost[0]") == 1, out
