"""The SDK's seed example, word for word except the import, against a real server — first one
the SDK starts itself, then one that already runs; and the SDK's promises: ``start_*`` waits
until the workload runs (a job: finished) or raises with the reason leaving nothing queued,
``allocated`` is what is allocated, and the applications it started are gone when the script
ends (unless kept)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for cgroups"),
]

SEED = textwrap.dedent(
    """
    from elastin import AutomationEngine
    engine = AutomationEngine()
    task = engine.create_task(command='ls -l', resources={'cpu': 1, 'memory': 128})
    engine.start_task(task)
    print(engine.get_task_resources(task))   # allocated resources and measured usage
    """
)


def run_script(env: dict[str, str], code: str, cwd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_seed_example_starts_its_own_server(harness: Any) -> None:
    res = run_script(harness.env, SEED, str(harness.tmp))
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "'requested': {'cpu': 1.0, 'memory_mib': 128.0" in out
    # start_task waited until `ls -l` finished: nothing is allocated to it any more
    assert "'allocated': {'cpu': 0.0, 'memory_mib': 0.0" in out
    assert "'status': 'complete'" in out, out
    assert "'instances': 1" in out
    # the server it started stopped at interpreter exit (it removes server.json on a clean exit)
    assert not (harness.data_dir / "server.json").exists()


def test_seed_example_with_running_server_and_task_output(harness: Any) -> None:
    h = harness.start()
    (harness.tmp / "marker.txt").write_text("x")
    # the task runs in this directory as a dynamic user: pytest made it 0700 (a project
    # directory is normally readable; the refusal otherwise is tested in
    # tests/integration/drivers/test_task_isolation.py)
    harness.tmp.chmod(0o755)
    code = SEED + textwrap.dedent(
        """
        import time
        for _ in range(100):
            r = engine.get_task_resources(task)
            if r['allocations'] and r['allocations'][0]['status'] in ('complete', 'failed'):
                break
            time.sleep(0.2)
        print('STATUS', r['allocations'][0]['status'], r['allocations'][0]['exit_code'])
        print('LOGS', engine.get_task_logs(task))
        """
    )
    res = run_script(h.env, code, str(harness.tmp))
    assert res.returncode == 0, res.stderr
    assert "STATUS complete 0" in res.stdout, res.stdout
    assert "marker.txt" in res.stdout


def test_bad_arguments_raise_a_clear_error(harness: Any) -> None:
    h = harness.start()
    code = textwrap.dedent(
        """
        from elastin import AutomationEngine
        from elastin.sdk import EngineError
        engine = AutomationEngine()
        try:
            engine.create_task(command='ls', resources={'cpu': -1, 'memory': 128})
        except EngineError as e:
            print('ERROR', e.message)
        """
    )
    res = run_script(h.env, code, str(harness.tmp))
    assert res.returncode == 0, res.stderr
    assert "ERROR" in res.stdout and "cpu" in res.stdout


def sdk_apps(h: Any) -> list[str]:
    names = (a["app"]["name"] for a in h.client.apps())
    return sorted(n for n in names if n.startswith("sdk-"))


def test_start_raises_the_reason_when_nothing_can_run_it_and_leaves_nothing_queued(
    harness: Any,
) -> None:
    h = harness.start()
    code = textwrap.dedent(
        """
        import time
        from elastin.automation import AutomationEngine, EngineError
        engine = AutomationEngine()
        task = engine.create_task(command='true', resources={'cpu': 1000, 'memory': 128})
        try:
            engine.start_task(task)
            print('STARTED')
        except EngineError as e:
            print('ERROR', e.message)
            print('HINT', e.hint)
        print('APP', task.app)
        """
    )
    res = run_script(h.env, code, str(harness.tmp))
    assert res.returncode == 0, res.stderr
    assert "STARTED" not in res.stdout
    assert "ERROR task 'task-" in res.stdout and "cannot start: " in res.stdout, res.stdout
    assert "cpu" in res.stdout.split("cannot start: ")[1], res.stdout
    assert sdk_apps(h) == []  # nothing queued behind
    app = res.stdout.split("APP ")[1].strip()
    h.wait_for(lambda: all(a.terminal for a in h.allocs(app)), 30, "its allocation stopped")


def test_a_service_runs_shows_what_is_allocated_and_is_deleted_when_the_script_ends(
    harness: Any,
) -> None:
    h = harness.start()
    code = textwrap.dedent(
        """
        from elastin.automation import AutomationEngine
        engine = AutomationEngine()
        web = engine.create_task(
            ['python3', '-c', 'import time; time.sleep(600)'],
            {'cpu': '250m', 'memory': 64}, service=True, replicas=2, name='sleepy',
        )
        engine.start_task(web)
        r = engine.get_task_resources(web)
        print('STATUSES', sorted(a['status'] for a in r['allocations']))
        print('ALLOCATED', r['allocated']['cpu'], r['allocated']['memory_mib'])
        kept = AutomationEngine(keep=True)
        kept.start_task(kept.create_task('true', name='kept'))
        """
    )
    res = run_script(h.env, code, str(harness.tmp))
    assert res.returncode == 0, res.stderr
    assert "STATUSES ['running', 'running']" in res.stdout, res.stdout
    assert "ALLOCATED 0.5 128.0" in res.stdout, res.stdout
    # the script ended: what its engine started is deleted, what was kept stays
    assert sdk_apps(h) == ["sdk-kept"]
    h.wait_for(lambda: not h.running("sdk-sleepy", "sleepy"), 30, "sleepy stopped")
