"""The CLI's commands against a scripted API: JSON outputs, exit codes 0/1/2/3, and errors
rendered as a message and a hint, never a traceback."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from cli_support import URL, FakeApi
from click.testing import Result

from elastin import __version__
from elastin.cli import common
from elastin.cli.main import main
from elastin.client.http import Client
from elastin.model.cluster import Allocation
from elastin.model.codec import to_data

Run = Callable[..., Result]

SPEC = """app: t
services:
  web:
    command: ["python3", "-c", "pass"]
    resources: {cpu: 100m, memory: 32Mi}
    replicas: 2
"""


def no_traceback(res: Result) -> None:
    assert isinstance(res.exception, SystemExit), res.exception
    assert "Traceback" not in res.output + res.stderr


def spec_file(tmp_path: Path, text: str = SPEC) -> str:
    p = tmp_path / "t.yaml"
    p.write_text(text)
    return str(p)


def alloc(status: str = "running", **kw: object) -> dict[str, object]:
    a = Allocation(id="a1", app="t", workload="web", index=0, node_id="n1", status=status)  # type: ignore[arg-type]
    data: dict[str, object] = to_data(a)
    data.update(name=a.name, **kw)
    return data


def test_version_plain_and_json(run: Run) -> None:
    res = run("version")
    assert res.exit_code == 0 and res.stdout == f"elastin {__version__}\n"
    data = json.loads(run("version", "--json").stdout)
    assert data == {"version": __version__, "python": sys.version.split()[0]}


def test_ps_json_is_services_and_allocations(api: FakeApi, run: Run) -> None:
    services = [{"app": "t", "name": "web", "type": "service", "running": 1, "desired": 2}]
    api.on("GET", "/v1/services", services)
    api.on("GET", "/v1/allocations", [alloc()])
    res = run("ps", "--json", "--all")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == {"services": services, "allocations": [alloc()]}
    assert api.sent("GET", "/v1/allocations")[0].url.params["all"] == "true"


def test_ps_without_applications_says_how_to_run_one(api: FakeApi, run: Run) -> None:
    api.on("GET", "/v1/services", [])
    api.on("GET", "/v1/allocations", [])
    res = run("ps")
    assert res.exit_code == 0
    assert "no applications; `elastin up FILE` runs one" in res.stdout


@pytest.mark.parametrize(
    ("command", "path", "data"),
    [
        ("nodes", "/v1/nodes", [{"id": "n1", "name": "here"}]),
        ("resources", "/v1/resources", {"cluster": {"requested": {"cpu": 100}}}),
        ("events", "/v1/events", [{"rev": 3, "type": "app.applied", "message": "t"}]),
    ],
)
def test_read_commands_print_the_api_answer_as_json(
    api: FakeApi, run: Run, command: str, path: str, data: object
) -> None:
    api.on("GET", path, data)
    res = run(command, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == data


def test_status_json_adds_the_url(api: FakeApi, run: Run) -> None:
    api.on("GET", "/v1/status", {"version": "1", "pid": 7, "revision": 9, "data_dir": "/d"})
    data = json.loads(run("status", "--json").stdout)
    assert data == {"version": "1", "pid": 7, "revision": 9, "data_dir": "/d", "url": URL}
    plain = run("status").stdout
    assert f"server {URL} (version 1, pid 7, revision 9, data in /d)" in plain


def test_apply_json_and_diff_json(api: FakeApi, run: Run, tmp_path: Path) -> None:
    result = {"app": "t", "dry_run": False, "changes": []}
    api.on("POST", "/v1/apps", result)
    res = run("apply", spec_file(tmp_path), "--json")
    assert res.exit_code == 0 and json.loads(res.stdout) == result
    sent = json.loads(api.sent("POST", "/v1/apps")[0].content)
    assert sent["spec"] == SPEC and sent["dry_run"] is False
    assert sent["base_dir"] == str(tmp_path)
    assert not api.sent("GET", "/v1/apps/t/settlement")  # no --wait: no wait
    res = run("diff", spec_file(tmp_path), "--json")
    assert res.exit_code == 0
    assert json.loads(api.sent("POST", "/v1/apps")[1].content)["dry_run"] is True


def test_apply_prints_the_changes(api: FakeApi, run: Run, tmp_path: Path) -> None:
    change = {"workload": "web", "type": "service", "change": "add", "detail": "2 replicas"}
    api.on("POST", "/v1/apps", {"app": "t", "dry_run": False, "changes": [change]})
    res = run("apply", spec_file(tmp_path))
    assert res.exit_code == 0
    assert res.stdout.splitlines() == ["t: applied", "  + service web: add (2 replicas)"]


def test_unreachable_server_exits_3_with_a_hint(api: FakeApi, run: Run) -> None:
    api.on("GET", "/v1/nodes", httpx.ConnectError("connection refused"))
    res = run("nodes")
    assert res.exit_code == 3
    no_traceback(res)
    assert f"error: cannot reach the Elastin server at {URL}" in res.stderr
    assert "hint: is it running?" in res.stderr


def test_no_server_found_exits_3(run: Run, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ELASTIN_ADDR", raising=False)
    monkeypatch.setenv("ELASTIN_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(common, "connect", Client.discover)
    res = run("ps")
    assert res.exit_code == 3
    no_traceback(res)
    assert f"no Elastin server is running (nothing in {tmp_path})" in res.stderr
    assert "hint: start one with `elastin up FILE`" in res.stderr


def test_api_error_exits_1_with_message_and_hint(api: FakeApi, run: Run) -> None:
    api.on(
        "POST",
        "/v1/scale/nope",
        httpx.Response(404, json={"message": "no service named 'nope'", "hint": "see ps"}),
    )
    res = run("scale", "nope", "3")
    assert res.exit_code == 1
    no_traceback(res)
    assert res.stderr.splitlines() == ["error: no service named 'nope'", "  hint: see ps"]


def test_rejected_spec_exits_1_and_says_nothing_changed(
    api: FakeApi, run: Run, tmp_path: Path
) -> None:
    body = {"message": "t.yaml:3: unknown field", "issues": [{"path": "services.web"}]}
    api.on("POST", "/v1/apps", httpx.Response(422, json=body))
    res = run("apply", spec_file(tmp_path))
    assert res.exit_code == 1
    no_traceback(res)
    assert res.stderr.splitlines() == ["t.yaml:3: unknown field", "nothing was changed"]


def test_invalid_spec_is_refused_locally(api: FakeApi, run: Run, tmp_path: Path) -> None:
    bad = spec_file(tmp_path, SPEC.replace("replicas: 2", "replicaz: 2"))
    res = run("apply", bad)
    assert res.exit_code == 1
    no_traceback(res)
    assert "t.yaml" in res.stderr and "replicaz" in res.stderr
    assert "nothing was changed" in res.stderr
    assert api.requests == []  # nothing was sent


def test_unreadable_spec_file(api: FakeApi, run: Run, tmp_path: Path) -> None:
    res = run("apply", str(tmp_path / "missing.yaml"))
    assert res.exit_code == 1
    no_traceback(res)
    assert f"error: cannot read {tmp_path / 'missing.yaml'}" in res.stderr


def test_validate_sends_nothing(api: FakeApi, run: Run, tmp_path: Path) -> None:
    res = run("validate", spec_file(tmp_path))
    assert res.exit_code == 0
    assert "application 't', 1 workload(s)" in res.stdout
    assert api.requests == []


def test_wrong_usage_exits_2(api: FakeApi, run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run("scale", "web", "many").exit_code == 2
    assert run("logs").exit_code == 2  # neither SERVICE nor --mesh
    monkeypatch.setattr(sys, "argv", ["elastin", "scale", "web", "many"])
    with pytest.raises(SystemExit) as exit:
        main()
    assert exit.value.code == 2
    assert api.requests == []


def test_logs_of_a_service_without_instances_exits_1(api: FakeApi, run: Run) -> None:
    api.on("GET", "/v1/services/web", {"allocations": []})
    res = run("logs", "web")
    assert res.exit_code == 1
    no_traceback(res)
    assert "error: 'web' has no instances" in res.stderr


def test_logs_print_the_instance_output(api: FakeApi, run: Run) -> None:
    api.on("GET", "/v1/services/web", {"allocations": [alloc()]})
    api.on("GET", "/v1/allocations/a1/logs", httpx.Response(200, content=b"hello\nworld\n"))
    res = run("logs", "web", "--tail", "5")
    assert res.exit_code == 0
    assert res.stdout == "hello\nworld\n"
    params = api.sent("GET", "/v1/allocations/a1/logs")[0].url.params
    assert (params["stream"], params["tail"], params["follow"]) == ("stdout", "5", "false")
