"""``render``'s rules that leave a normal response out of the access log (issue #12, its
cost on HAProxy 3.0): one rule with 3.0's sample fetches, the 2.6 form (a variable filled
from log-format tags) kept for an older HAProxy, chosen by HAProxy itself when it reads the
configuration; both HAProxy releases accept the text. What the rules log with real traffic
is in tests/integration/mesh/test_access_log_sampling.py."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from elastin.mesh.haproxy.process import haproxy_binary, haproxy_version
from elastin.mesh.haproxy.render import Paths, render
from elastin.mesh.model import Cluster, Endpoint, Listener, MeshSnapshot

DEBIAN_HAPROXY = "/usr/sbin/haproxy"  # Debian 12's HAProxy 2.6, kept for comparisons


def snapshot(**policy: object) -> MeshSnapshot:
    c = Cluster("a.w.http", endpoints=(Endpoint("e1", "127.0.0.1", 8001),), **policy)  # type: ignore[arg-type]
    return MeshSnapshot(1, "n1", (Listener("c.w", 20001, "a.w.http"),), (c,))


def frontend(**policy: object) -> str:
    text = render(snapshot(**policy), Paths("/tmp/x.sock"))
    return text.split("frontend l_c.w\n", 1)[1].split("\n\n", 1)[0]


def block(text: str) -> tuple[list[str], list[str]]:
    """The lines of the ``.if version_atleast(3.0)`` branch and of its ``.else``."""
    lines = [x.strip() for x in text.splitlines()]
    start, other, end = (
        lines.index(".if version_atleast(3.0)"),
        lines.index(".else"),
        lines.index(".endif"),
    )
    return lines[start + 1 : other], lines[other + 1 : end]


def test_the_defaults_silence_with_one_rule_of_sample_fetches_on_3_0() -> None:
    new, old = block(frontend())
    assert new == [
        "http-response set-log-level silent if { rand(1000000) ge 10000 } { status lt 500 }"
        " !{ status 429 } { txn.conn_retries eq 0 } !{ txn.redispatched }"
        " { res.timer.hdr lt 1000 }"
    ]
    assert "set-var-fmt" not in " ".join(new)  # no log-format string built per response
    assert old[0].startswith('http-response set-var-fmt(txn.elastin_log) "%rc/%Tr" if ')
    assert old[1].startswith("http-response set-log-level silent if { var(txn.elastin_log)")


def test_errors_without_slow_reads_only_the_retries() -> None:
    new, old = block(frontend(access_log_sample=0.0, slow=0.0))
    assert new == [
        "http-response set-log-level silent if { status lt 500 } !{ status 429 }"
        " { txn.conn_retries eq 0 } !{ txn.redispatched }"
    ]
    assert old[0] == (
        'http-response set-var-fmt(txn.elastin_log) "%rc" if { status lt 500 } !{ status 429 }'
    )


def test_all_and_off_have_no_silencing_rules() -> None:
    for policy in ({"access_log_sample": 1.0}, {"access_log": False}):
        text = frontend(**policy)
        assert ".if" not in text and "set-log-level" not in text


def binaries() -> list[str]:
    found = [b for b in {haproxy_binary() or "", DEBIAN_HAPROXY} if b and os.access(b, os.X_OK)]
    return sorted(found)


@pytest.mark.skipif(not binaries(), reason="no haproxy installed")
@pytest.mark.parametrize("binary", binaries())
def test_every_installed_haproxy_accepts_the_rules(binary: str, tmp_path: Path) -> None:
    """3.0 reads its branch; 2.6 (which has no txn.conn_retries) reads the other."""
    version = haproxy_version(binary)
    assert version is not None
    for policy in ({}, {"access_log_sample": 0.0, "slow": 0.0}):
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(render(snapshot(**policy), Paths(str(tmp_path / "s.sock"))))
        proc = subprocess.run(
            [binary, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30
        )
        assert proc.returncode == 0, (version, proc.stdout + proc.stderr)
