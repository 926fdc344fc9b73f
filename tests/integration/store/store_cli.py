"""The CLI and a server process against one data directory, for the store's integration
tests (a plain module beside them, not a test file)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path


def cli_env(data_dir: Path) -> dict[str, str]:
    """This environment without any ELASTIN_ setting, with ``data_dir`` as the data dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELASTIN_")}
    env["ELASTIN_DATA_DIR"] = str(data_dir)
    return env


def elastin(data_dir: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """``elastin ARGS`` on ``data_dir``, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "elastin.cli.main", *args],
        env=cli_env(data_dir),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextlib.contextmanager
def server_process(data_dir: Path) -> Iterator[tuple[subprocess.Popen[str], str, str]]:
    """``elastin server --port 0`` on ``data_dir`` until it listens: (process, url, token);
    stopped afterwards if it still runs."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "elastin.cli.main", "server", "--port", "0"],
        env=cli_env(data_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        info = data_dir / "server.json"
        for _ in range(300):
            if info.exists() and info.read_text():
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        url = json.loads(info.read_text())["url"]
        yield proc, url, (data_dir / "token").read_text().strip()
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
