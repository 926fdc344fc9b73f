"""End-to-end harness: a real ``elastin server`` and ``elastin agent`` as separate processes,
on a free loopback port, with a temporary data directory and a cgroup root of their own.

Everything the harness starts is stopped at the end: the processes, every workload left in
the test's cgroups, and the cgroups themselves.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from elastin.agent.drivers.cgroups import destroy_root
from elastin.client.http import Client

CGROUP_BASE = Path("/sys/fs/cgroup")
HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/e2e is an ``integration`` test, whether or not its module says
    so (tests/unit/arch/test_markers.py checks it)."""
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.integration)


def _can_cgroup() -> bool:
    return os.geteuid() == 0 and CGROUP_BASE.exists()


needs_root = pytest.mark.skipif(not _can_cgroup(), reason="needs root and cgroups")


class Harness:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        # specs are written here, and a task without `workdir:` runs in its spec's directory
        # as a dynamic user, who must be able to read it: pytest makes it 0700, a project
        # directory is normally 0755 (the refusal is tested in test_task_isolation.py)
        tmp.chmod(0o755)
        self.data_dir = tmp / "data"
        self.cgroup_root = f"elastin-test-{secrets.token_hex(4)}"
        self.env = {
            **os.environ,
            "ELASTIN_DATA_DIR": str(self.data_dir),
            "ELASTIN_CGROUP_ROOT": self.cgroup_root,
            "PYTHONUNBUFFERED": "1",
            # workloads run `python3`: the interpreter of this environment (as `make` does)
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        }
        self.env.pop("ELASTIN_ADDR", None)
        self.env.pop("ELASTIN_TOKEN", None)
        self.server: subprocess.Popen[bytes] | None = None
        self.agent: subprocess.Popen[bytes] | None = None
        self._client: Client | None = None

    # processes --------------------------------------------------------------------------
    def _spawn(self, *args: str, log: str) -> subprocess.Popen[bytes]:
        out = open(self.tmp / log, "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            [sys.executable, "-m", "elastin.cli.main", *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()
        return proc

    def start_server(self) -> None:
        info = self.data_dir / "server.json"
        info.unlink(missing_ok=True)
        self.server = self._spawn("server", "--port", "0", log="server.log")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if info.exists():
                try:
                    if json.loads(info.read_text())["pid"] == self.server.pid:
                        break
                except (ValueError, KeyError):
                    pass
            if self.server.poll() is not None:
                raise RuntimeError("server exited: " + self.log("server.log"))
            time.sleep(0.05)
        else:
            raise RuntimeError("server did not start: " + self.log("server.log"))
        if self._client:
            self._client.close()
        self._client = None

    def start_agent(self) -> None:
        self.agent = self._spawn("agent", log="agent.log")
        self.wait_for(
            lambda: any(n["status"] == "ready" for n in self.client.nodes()), 30, "agent registered"
        )

    def start(self) -> Harness:
        self.start_server()
        self.start_agent()
        return self

    def kill(self, which: str, sig: int = signal.SIGKILL) -> None:
        proc = self.server if which == "server" else self.agent
        assert proc is not None
        proc.send_signal(sig)
        proc.wait(30)

    def log(self, name: str) -> str:
        path = self.tmp / name
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    # api ------------------------------------------------------------------------------
    @property
    def client(self) -> Client:
        if self._client is None:
            info = json.loads((self.data_dir / "server.json").read_text())
            token = (self.data_dir / "token").read_text().strip()
            self._client = Client(info["url"], token)
        return self._client

    def cli(
        self, *args: str, check: bool = False, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [sys.executable, "-m", "elastin.cli.main", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and res.returncode != 0:
            raise AssertionError(
                f"elastin {' '.join(args)} -> {res.returncode}\n{res.stdout}\n{res.stderr}"
            )
        return res

    def wait_for(self, cond: Any, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = cond()
            except Exception as e:  # transient while processes restart
                last = e
            if last and not isinstance(last, Exception):
                return last
            time.sleep(0.2)
        raise AssertionError(
            f"timed out waiting for {what} (last: {last!r})\n--- server:\n"
            + self.log("server.log")
            + "\n--- agent:\n"
            + self.log("agent.log")
        )

    def allocs(self, app: str | None = None, all: bool = True) -> list[Any]:
        return self.client.allocations(app=app, all=all)

    def running(self, app: str, workload: str) -> list[Any]:
        return [a for a in self.allocs(app) if a.workload == workload and a.status == "running"]

    def write_spec(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.write_text(text)
        return path

    # cleanup --------------------------------------------------------------------------
    def close(self) -> None:
        if self._client:
            self._client.close()
        for proc in (self.agent, self.server):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
        destroy_root(self.cgroup_root)
        pid_file = self.data_dir / "mesh" / "haproxy.pid"  # the agent's detached HAProxy
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        h.close()
