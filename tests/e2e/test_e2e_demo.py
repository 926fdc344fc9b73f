"""`make demo`'s command for real: `elastin up examples/shop.yaml` in the foreground, the shop
answering through its frontend — each path its own answer (health, readiness, a 404 for an
unknown path and for a missing product), no traceback in its logs — then Ctrl-C (SIGINT)
stopping everything cleanly."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for cgroups"),
]

ROOT = Path(__file__).resolve().parents[2]


def test_up_runs_the_shop_and_ctrl_c_stops_it(harness: Any) -> None:
    out_path = harness.tmp / "up.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "elastin.cli.main",
                "up",
                str(ROOT / "examples" / "shop.yaml"),
                "--port",
                "0",
                "--timeout",
                "90",
            ],
            env=harness.env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            text = out_path.read_text(errors="replace")
            if "Ctrl-C stops" in text or proc.poll() is not None:
                break
            time.sleep(0.5)
        text = out_path.read_text(errors="replace")
        assert proc.poll() is None, text
        assert "shop is up" in text, text
        assert "elastin ps" in text and "/v1" in text
        with urllib.request.urlopen("http://127.0.0.1:18080/", timeout=5) as r:
            assert r.status == 200
            page = json.loads(r.read())
        # stock comes from inventory, a gRPC service, through the mesh over HTTP/2
        assert all(isinstance(p["stock"], int) for p in page["products"]), page
        # each path is its own answer (they all answered the product list before)
        assert shop("GET", "/healthz") == (200, {"ok": True})
        assert shop("GET", "/readyz") == (200, {"ready": True})
        assert shop("GET", "/nope")[0] == 404
        assert shop("POST", "/order", {"id": 1}) == (404, {"error": "no product '1'"})
        status, ordered = shop("POST", "/order", {"id": "p2", "qty": 1})
        assert (status, ordered["ordered"]) == (200, "milk jug"), ordered
        # a client that resets its connection (as HAProxy's health checks do): one line
        reset_connection(18080)
        harness.wait_for(
            lambda: "reset by the client" in harness.cli("logs", "frontend", "--tail", "0").stdout,
            30,
            "the frontend's line about the reset connection",
        )
        for stream in (["--stderr"], []):
            logs = harness.cli("logs", "frontend", *stream, "--tail", "0", check=True).stdout
            assert "Traceback" not in logs and "ConnectionResetError" not in logs, logs
        mesh_log = harness.cli("logs", "--mesh", "inventory", check=True).stdout
        assert "/shop.Inventory/Stock" in mesh_log, mesh_log[-2000:]
        ps = harness.cli("ps", "--json", check=True)
        data = json.loads(ps.stdout)
        names = {s["name"] for s in data["services"]}
        assert {"frontend", "catalog", "inventory", "report"} <= names
        pids = [a["pid"] for a in data["allocations"] if a["status"] == "running"]
        assert pids
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)  # dump every thread's stack into up.out
            time.sleep(1)
            raise AssertionError(
                "elastin up did not stop:\n" + out_path.read_text(errors="replace")[-8000:]
            ) from None
        assert code == 0, out_path.read_text(errors="replace")
        for pid in pids:
            assert not Path(f"/proc/{pid}").exists() or _zombie(pid)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def shop(method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """Call the shop's frontend (its fixed port): the status and the JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:18080{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def reset_connection(port: int) -> None:
    """Connect to ``port`` on loopback and close with a reset (SO_LINGER 0), sending nothing."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True
