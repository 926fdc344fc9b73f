"""Scale to zero in the mesh (issue #13, item 3): a service whose autoscale.min is 0 gets,
in each caller's frontend, the Lua wake action guarded by ``nbsrv(<backend>) eq 0`` and the
two named 503s (held too long, too many held; a gRPC port answers gRPC's UNAVAILABLE); the
Lua is loaded only then; the wake URL is checked before it reaches the configuration; the
mesh model's cluster says whether the service scales to zero. Both installed HAProxy
releases accept the text. The behaviour with real traffic: tests/e2e/test_e2e_scale_to_zero.py
and tests/integration/mesh/test_wake_real.py."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from elastin.mesh.haproxy.process import haproxy_binary, haproxy_version
from elastin.mesh.haproxy.render import LUA_SCRIPT, Paths, render
from elastin.mesh.model import Cluster, Listener, MeshSnapshot
from elastin.mesh.model.build import build_clusters
from elastin.mesh.model.types import MeshModelError
from elastin.model.spec import parse_spec

DEBIAN_HAPROXY = "/usr/sbin/haproxy"
WAKE = "http://127.0.0.1:40123/v1/mesh/wake/0123abcd"


def snapshot(protocol: str = "http", **policy: object) -> MeshSnapshot:
    c = Cluster("a.w.http", protocol=protocol, **policy)  # type: ignore[arg-type]
    lst = Listener("c.w", 20001, "a.w.http", protocol=protocol)  # type: ignore[arg-type]
    return MeshSnapshot(1, "n1", (lst,), (c,))


def paths(wake: str = WAKE, where: str = "/tmp") -> Paths:
    return Paths(f"{where}/x.sock", lua_file=f"{where}/elastin.lua", wake_url=wake)


def frontend(text: str) -> str:
    return text.split("frontend l_c.w\n", 1)[1].split("\n\n", 1)[0]


def test_a_service_scaled_to_zero_is_held_in_its_callers_frontend() -> None:
    text = render(snapshot(scale_to_zero=True, hold_timeout=2.5, hold_max=7), paths())
    fe = frontend(text)
    rule = f"lua.elastin_wake c_a.w.http 2500 7 {WAKE} if {{ nbsrv(c_a.w.http) eq 0 }}"
    assert f"    http-request {rule}" in fe.splitlines()
    lines = fe.splitlines()
    timeout = next(x for x in lines if "-m str timeout" in x)
    full = next(x for x in lines if "-m str full" in x)
    assert "status 503" in timeout and "no replica of a.w.http started within 2500ms" in timeout
    assert "status 503" in full and "too many requests held for a.w.http" in full
    assert "(at most 7)" in full
    # the hold comes before the request goes to its backend, and its answers after it
    wake_at = lines.index(next(x for x in lines if "lua.elastin_wake" in x))
    assert lines.index(timeout) > wake_at and lines.index(full) > wake_at
    assert lines[-1] == "    default_backend c_a.w.http"
    assert "    lua-load /tmp/elastin.lua" in text.splitlines()
    assert 'core.register_action("elastin_wake"' in LUA_SCRIPT


def test_grpc_ports_answer_grpc_unavailable() -> None:
    fe = frontend(render(snapshot("grpc", scale_to_zero=True), paths()))
    for line in (x for x in fe.splitlines() if "var(txn.elastin_wake)" in x):
        assert "status 200 hdr content-type application/grpc hdr grpc-status 14" in line


def test_no_hold_without_scale_to_zero_or_without_a_wake_url() -> None:
    for text in (
        render(snapshot(), paths()),  # min above 0
        render(snapshot(scale_to_zero=True), Paths("/tmp/x.sock")),  # no agent to tell
    ):
        assert "elastin_wake" not in text and "lua-load" not in text


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1:4000/wake",  # not loopback
        "http://localhost:4000/wake",
        "https://127.0.0.1:4000/wake",
        "http://127.0.0.1:70000/wake",  # no such port
        "http://127.0.0.1:0/wake",
        "http://127.0.0.1:4000/wake now",  # would be two words in the configuration
        "http://127.0.0.1:4000/wake\n    lua-load /x",
        "http://127.0.0.1:4000/wake?x=1",
        "http://127.0.0.1:4000/",
    ],
)
def test_a_bad_wake_url_never_reaches_the_configuration(url: str) -> None:
    with pytest.raises(MeshModelError, match="wake_url"):
        Paths("/tmp/x.sock", wake_url=url)


def test_the_cluster_checks_its_hold() -> None:
    with pytest.raises(MeshModelError, match="TCP"):
        Cluster("a.w.db", protocol="tcp", scale_to_zero=True)
    with pytest.raises(MeshModelError, match="hold_max"):
        Cluster("a.w.http", scale_to_zero=True, hold_max=0)
    with pytest.raises(MeshModelError, match="hold_timeout"):
        Cluster("a.w.http", scale_to_zero=True, hold_timeout=0)


SPEC = """
app: a
services:
  zero:
    command: python3 -m http.server
    ports: {http: 0, rpc: {port: 0, protocol: grpc}}
    mesh: {request_timeout: 12s, max_queue: 5}
    autoscale: {min: 0, max: 3, metrics: [{inflight: 4}], idle_after: 2s}
  one:
    command: python3 -m http.server
    ports: {http: 0}
    autoscale: {min: 1, max: 3, metrics: [{inflight: 4}]}
  plain:
    command: python3 -m http.server
    ports: {http: 0}
"""


def test_the_mesh_model_knows_which_services_scale_to_zero() -> None:
    app = parse_spec(SPEC)
    clusters = {c.name: c for c in build_clusters({"a": app}, [], {})}
    for name in ("a.zero.http", "a.zero.rpc"):
        c = clusters[name]
        assert c.scale_to_zero and c.hold_timeout == 12.0 and c.hold_max == 5, c
    assert not clusters["a.one.http"].scale_to_zero
    assert not clusters["a.plain.http"].scale_to_zero
    default = parse_spec(SPEC.replace("mesh: {request_timeout: 12s, max_queue: 5}", ""))
    c = {c.name: c for c in build_clusters({"a": default}, [], {})}["a.zero.http"]
    assert c.hold_timeout == 30.0 and c.hold_max == 100


def binaries() -> list[str]:
    found = [b for b in {haproxy_binary() or "", DEBIAN_HAPROXY} if b and os.access(b, os.X_OK)]
    return sorted(found)


@pytest.mark.skipif(not binaries(), reason="no haproxy installed")
@pytest.mark.parametrize("binary", binaries())
def test_every_installed_haproxy_accepts_the_hold(binary: str, tmp_path: Path) -> None:
    (tmp_path / "elastin.lua").write_text(LUA_SCRIPT)
    for protocol in ("http", "http2", "grpc"):
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(render(snapshot(protocol, scale_to_zero=True), paths(where=str(tmp_path))))
        proc = subprocess.run(
            [binary, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30
        )
        assert proc.returncode == 0, (haproxy_version(binary), proc.stdout + proc.stderr)


def test_held_requests_share_one_look_per_backend() -> None:
    """The held requests of a backend poll every 20-50 ms and share one look (and one
    connect probe) per backend per poll, instead of each probing every 5 ms (review of issue
    #13, finding 8). Exercised with real traffic in tests/integration/mesh/test_wake_real.py."""
    import re

    poll = re.search(r"local ELASTIN_POLL_MS = (\d+)", LUA_SCRIPT)
    assert poll is not None and 20 <= int(poll.group(1)) <= 50
    assert "core.msleep(ELASTIN_POLL_MS)" in LUA_SCRIPT
    assert "core.msleep(5)" not in LUA_SCRIPT
    wake = LUA_SCRIPT.split("local function elastin_wake", 1)[1]
    assert "elastin_listening" not in wake  # probes only through the shared look
    assert "elastin_ready(backend, be, now)" in wake
    ready = LUA_SCRIPT.split("local function elastin_ready", 1)[1].split("\nend\n", 1)[0]
    assert "if now - seen.at < ELASTIN_POLL_MS then" in ready and "seen.at = now" in ready
