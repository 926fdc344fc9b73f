"""What the CLI makes of its input and of a missing server: a binary spec file is one clear
error for every command that reads one; `scale web -1` is a value the server answers; with
no server but instances Elastin started still running, every command says so; `up --detach`
stops the background server it started when the apply was refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

import httpx
import pytest
from cli_support import FakeApi
from click.testing import Result

from elastin.agent.drivers.base import Handle, proc_start_ticks
from elastin.cli import common, deploy
from elastin.client.http import Client
from elastin.model.cluster import Allocation
from elastin.model.codec import to_data

Run = Callable[..., Result]

SPEC = """app: t
services:
  web:
    command: ["python3", "-c", "pass"]
    resources: {cpu: 100m, memory: 32Mi}
"""


def no_traceback(res: Result) -> None:
    assert isinstance(res.exception, SystemExit), res.exception
    assert "Traceback" not in res.output + res.stderr


@pytest.mark.parametrize("command", ["apply", "diff", "up", "validate"])
def test_a_binary_spec_file_is_one_clear_error(
    api: FakeApi, run: Run, tmp_path: Path, command: str
) -> None:
    binary = tmp_path / "photo.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    res = run(command, str(binary))
    assert res.exit_code == 1
    no_traceback(res)
    assert f"{binary}: <root>: the file is not UTF-8 text (byte 0: 0x89)" in res.stderr
    assert "hint: give the path of a YAML spec file" in res.stderr
    assert "nothing was changed" in res.stderr
    assert api.requests == []


def test_scale_to_a_negative_count_is_the_servers_clear_error(api: FakeApi, run: Run) -> None:
    message = "replicas must be between 0 and 1000, got -1"
    api.on("POST", "/v1/scale/web", httpx.Response(400, json={"message": message}))
    res = run("scale", "web", "-1")
    assert res.exit_code == 1
    no_traceback(res)
    assert res.stderr.splitlines() == [f"error: {message}"]
    assert json.loads(api.sent("POST", "/v1/scale/web")[0].content)["replicas"] == -1


def test_scale_still_refuses_what_is_not_a_number(api: FakeApi, run: Run) -> None:
    res = run("scale", "web", "-x")
    assert res.exit_code == 2
    assert "'-x' is not a valid integer" in res.output
    assert api.requests == []


# ------------------------------------------------------------------ left running, no server
@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A data directory with no server running in it; the CLI looks there."""
    data = tmp_path / "data"
    (data / "agent" / "handles").mkdir(parents=True)
    monkeypatch.delenv("ELASTIN_ADDR", raising=False)
    monkeypatch.setenv("ELASTIN_DATA_DIR", str(data))
    monkeypatch.setattr(common, "connect", Client.discover)
    return data


@pytest.fixture
def instance() -> Iterator[subprocess.Popen[bytes]]:
    """A process standing for an instance whose agent died."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def write_handle(data: Path, alloc_id: str, pid: int) -> None:
    alloc = Allocation(id=alloc_id, app="t", workload="web", index=0, node_id="n1")
    ticks = proc_start_ticks(pid) or 0
    handle = Handle(alloc_id, "task", pid, 0.0, {"start_ticks": ticks})
    body = {"handle": to_data(handle), "alloc": to_data(alloc), "restarts": 0, "ports": {}}
    (data / "agent" / "handles" / f"{alloc_id}.json").write_text(json.dumps(body))


def test_no_server_but_instances_still_running_says_so(
    run: Run, no_server: Path, instance: subprocess.Popen[bytes]
) -> None:
    write_handle(no_server, "a1b2c3d4e5f6", instance.pid)
    write_handle(no_server, "0f0f0f0f0f0f", 2**22 + 7)  # long gone: not counted
    for command in ("ps", "logs"):
        res = run(command, "web") if command == "logs" else run(command)
        assert res.exit_code == 3
        no_traceback(res)
        assert res.stderr.splitlines() == [
            "error: no Elastin server is running, but 1 instance started by Elastin still "
            f"runs (pid {instance.pid})",
            "  hint: `elastin down` stops it; `elastin up FILE` re-attaches to it",
        ]


def test_no_server_and_nothing_running_is_the_plain_message(run: Run, no_server: Path) -> None:
    write_handle(no_server, "0f0f0f0f0f0f", 2**22 + 7)
    res = run("ps")
    assert res.exit_code == 3
    assert f"no Elastin server is running (nothing in {no_server})" in res.stderr


def test_left_running_counts_live_instances_only(
    no_server: Path, instance: subprocess.Popen[bytes]
) -> None:
    write_handle(no_server, "a1b2c3d4e5f6", instance.pid)
    write_handle(no_server, "b1b2c3d4e5f6", os.getpid())
    left = common.left_running(no_server)
    assert [(x.alloc_id, x.pid) for x in left] == [
        ("a1b2c3d4e5f6", instance.pid),
        ("b1b2c3d4e5f6", os.getpid()),
    ]
    assert common.left_running_message(left).endswith(
        f"2 instances started by Elastin still run (pids {instance.pid}, {os.getpid()})"
    )


# ----------------------------------------------------------------------- up --detach refused
class FakeDaemon:
    pid = 4242


def test_up_detach_stops_the_server_it_started_when_the_apply_is_refused(
    api: FakeApi, run: Run, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("ELASTIN_ADDR")
    started: list[FakeDaemon] = []
    stopped: list[FakeDaemon] = []

    def start(data_dir: Path, **_: object) -> FakeDaemon:
        data_dir.mkdir(parents=True, exist_ok=True)
        started.append(FakeDaemon())
        return started[-1]

    monkeypatch.setattr(deploy, "start_daemon", start)
    monkeypatch.setattr(deploy, "stop_daemon", stopped.append)
    body = {"message": "application 't' kept changing while applying; try again"}
    api.on("POST", "/v1/apps", httpx.Response(409, json=body))
    spec = tmp_path / "t.yaml"
    spec.write_text(SPEC)
    res = run("up", "--detach", str(spec))
    assert res.exit_code == 1
    no_traceback(res)
    assert stopped == started and len(started) == 1
    assert not (tmp_path / "data" / "daemon.pid").exists()
    assert res.stderr.splitlines() == [
        "stopped the background server `up --detach` started (pid 4242): the apply did not "
        "go through",
        f"error: {body['message']}",
    ]


def test_up_detach_that_does_not_settle_says_the_server_keeps_running(
    api: FakeApi, run: Run, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("ELASTIN_ADDR")
    stopped: list[FakeDaemon] = []

    def start(data_dir: Path, **_: object) -> FakeDaemon:
        data_dir.mkdir(parents=True, exist_ok=True)
        return FakeDaemon()

    monkeypatch.setattr(deploy, "start_daemon", start)
    monkeypatch.setattr(deploy, "stop_daemon", stopped.append)
    api.on("POST", "/v1/apps", {"app": "t", "dry_run": False, "changes": []})
    failed = {"app": "t", "state": "failed", "summary": "web 0/1", "index": 2, "workloads": []}
    api.on("GET", "/v1/apps/t/settlement", failed)
    api.on("GET", "/v1/allocations", [])
    spec = tmp_path / "t.yaml"
    spec.write_text(SPEC)
    res = run("up", "-d", str(spec))
    assert res.exit_code == 4
    assert stopped == []
    assert (tmp_path / "data" / "daemon.pid").read_text() == "4242"
    assert res.stderr.splitlines()[-2:] == [
        "error: application 't' did not settle",
        "  hint: see `elastin ps` and `elastin events`; the server keeps running in the "
        "background: `elastin down` stops it",
    ]


# ------------------------------------------------------------------- an output nobody reads
@pytest.fixture
def closed_pipe() -> Iterator[TextIO]:
    """The writing end of a pipe whose reader went away."""
    r, w = os.pipe()
    os.close(r)
    out = os.fdopen(w, "w")
    try:
        yield out
    finally:
        out.close()


def test_a_console_whose_reader_went_away_goes_quiet_and_says_so(closed_pipe: TextIO) -> None:
    told: list[str] = []
    forget = common.on_output_closed(lambda: told.append("closed"))
    try:
        c = common._Console(file=closed_pipe, width=80)
        c.print("a table nobody reads")  # EPIPE: no exception, no exit
        c.print("and another")
    finally:
        forget()
    assert told == ["closed"] and c.quiet
    assert os.readlink(f"/proc/self/fd/{closed_pipe.fileno()}") == os.devnull
    closed_pipe.write("the last flush\n")
    closed_pipe.flush()  # goes to /dev/null now


def test_a_closed_output_is_found_without_writing(closed_pipe: TextIO) -> None:
    c = common._Console(file=closed_pipe)
    assert common.output_closed(c)
    assert not common.output_closed(common._Console(file=sys.stderr))


def test_no_server_but_its_state_says_where_the_state_is(run: Run, no_server: Path) -> None:
    (no_server / "state.db").write_bytes(b"")
    res = run("ps")
    assert res.exit_code == 3
    no_traceback(res)
    assert res.stderr.splitlines() == [
        f"error: no Elastin server is running (its state is in {no_server / 'state.db'}; no "
        "instance it started still runs)",
        "  hint: `elastin up FILE` or `elastin server` starts one with that state",
    ]
