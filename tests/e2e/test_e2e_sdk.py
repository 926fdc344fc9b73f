"""The SDK's seed example, word for word except the import, against a real server — first one
the SDK starts itself, then one that already runs."""

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
    assert "'allocated': {'cpu': 1.0, 'memory_mib': 128.0" in out
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
