"""A hostile workload against the task driver, for real (issue #10, items 2, 7 and 9).

Each instance runs as a dynamic user of its own in a private mount namespace: it cannot read
Elastin's data directory (the token), another instance's logs, a root-only socket, signal
another instance, or raise its own limits by writing its cgroup files; its files are readable
by root and its own user only; an exec check runs inside it and a timeout kills everything the
check started. A checkout under a directory closed to others (as ``/root``) still works.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import secrets
import socket
import stat
import sys
import textwrap
from pathlib import Path

import pytest

from elastin.agent.drivers.base import Handle, InstanceConfig, StartError
from elastin.agent.drivers.cgroups import Cgroup
from elastin.agent.drivers.sandbox import UID_BASE, UID_COUNT
from elastin.agent.drivers.task import TaskDriver
from elastin.agent.health import probe
from elastin.agent.logfiles import cap, unstamp
from elastin.model.resources import Resources
from elastin.model.workload import HealthCheck

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for cgroups and users"),
]

PY = sys.executable  # the venv's interpreter: its venv is exposed to the instance

PROBE = textwrap.dedent(
    """
    import json, os, signal, socket, sys
    out = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
           "home": os.environ.get("HOME"), "env_token": os.environ.get("ELASTIN_TOKEN")}
    def attempt(name, fn):
        try:
            fn()
            out[name] = "ok"
        except OSError as e:
            out[name] = e.errno
    alloc = os.environ["ELASTIN_ALLOC_DIR"]
    attempt("token", lambda: open(os.path.join(alloc, "..", "..", "token")).read())
    attempt("other_log", lambda: open(os.environ["OTHER_LOG"]).read())
    attempt("kill_other", lambda: os.kill(int(os.environ["OTHER_PID"]), signal.SIGTERM))
    def sock():
        s = socket.socket(socket.AF_UNIX)
        s.connect(os.environ["SOCK"])
    attempt("socket", sock)
    def raise_limit():
        with open(os.environ["CGFILE"], "w") as f:
            f.write("max\\n")
    attempt("cgroup", raise_limit)
    attempt("own_log", lambda: open(os.path.join(alloc, "logs", "stdout.log")).read())
    attempt("write_local", lambda: open(os.path.join(alloc, "local", "x"), "w").write("x"))
    attempt("write_status", lambda: open(os.path.join(alloc, "status"), "w").write("0"))
    attempt("write_workdir", lambda: open("written", "w").write("x"))
    attempt("read_workdir", lambda: open("data.txt").read())
    print(json.dumps(out), flush=True)
    """
)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A data directory as Elastin makes it: 0700, with a 0600 token."""
    d = tmp_path / "data"
    (d / "allocs").mkdir(parents=True)
    d.chmod(0o700)
    (d / "token").write_text("secret")
    (d / "token").chmod(0o600)
    return d


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A workload's files under a directory others cannot enter (as a checkout in /root)."""
    closed = tmp_path / "home"
    work = closed / "proj" / "svc"
    work.mkdir(parents=True)
    closed.chmod(0o700)
    (work / "probe.py").write_text(PROBE)
    (work / "data.txt").write_text("hello")
    (closed / "secret.txt").write_text("do not read")
    return work


def cfg(
    data: Path, alloc: str, cmd: tuple[str, ...], workdir: str = "", user: str = "", **env: str
) -> InstanceConfig:
    return InstanceConfig(
        alloc,
        alloc,
        cmd,
        {"PATH": os.environ["PATH"], "ELASTIN_ALLOC_DIR": str(data / "allocs" / alloc), **env},
        workdir,
        Resources(200, 64 << 20, 0),
        str(data / "allocs" / alloc),
        pids_limit=64,
        user=user,
    )


async def run_to_end(driver: TaskDriver, config: InstanceConfig) -> tuple[Handle, str]:
    h = await driver.start(config)
    async with asyncio.timeout(30):
        result = await driver.wait(h)
    out = unstamp((Path(config.alloc_dir) / "logs" / "stdout.log").read_bytes()).decode()
    err = unstamp((Path(config.alloc_dir) / "logs" / "stderr.log").read_bytes()).decode()
    assert result.exit_code == 0, (result, err)
    await driver.cleanup(h)
    return h, out


async def test_a_hostile_workload_reaches_nothing_of_elastin_or_its_neighbours(
    driver: TaskDriver, data: Path, checkout: Path, tmp_path: Path
) -> None:
    victim = await driver.start(
        cfg(data, "victim", (PY, "-c", "print('pw=1', flush=True);import time;time.sleep(60)"))
    )
    root_sock = socket.socket(socket.AF_UNIX)
    sock_path = tmp_path / "runtime.sock"
    root_sock.bind(str(sock_path))
    root_sock.listen(1)
    sock_path.chmod(0o600)
    tmp_path.chmod(0o755)  # the socket itself is reachable: only its mode protects it
    try:
        async with asyncio.timeout(10):
            while "pw=1" not in (data / "allocs" / "victim" / "logs" / "stdout.log").read_text():
                await asyncio.sleep(0.05)
        cg = Cgroup(driver.cgroup_root, "attacker", version=driver.info.version)
        pids_file = cg.dirs.get("pids", cg.dirs.get("unified", Path("/nonexistent")))
        pids_max = str(pids_file / "pids.max")
        victim_log = str(data / "allocs" / "victim" / "logs" / "stdout.log")
        # paths in the environment: paths in the arguments are checked before the start
        paths = {"OTHER_LOG": victim_log, "OTHER_PID": str(victim.pid), "SOCK": str(sock_path)}
        h, out = await run_to_end(
            driver, cfg(data, "attacker", (PY, "probe.py"), str(checkout), CGFILE=pids_max, **paths)
        )
        seen = json.loads(out.strip().splitlines()[-1])
        assert UID_BASE <= seen["uid"] < UID_BASE + UID_COUNT
        assert seen["gid"] == seen["uid"] and set(seen["groups"]) <= {seen["gid"]}
        assert seen["token"] != "ok"
        assert seen["other_log"] != "ok"
        assert seen["kill_other"] != "ok" and driver._alive(victim)
        assert seen["socket"] != "ok"
        assert seen["cgroup"] != "ok"
        assert seen["cgroup"] == 13  # EACCES: the limits stay what the spec says
        assert seen["own_log"] == "ok"
        assert seen["write_local"] == "ok"
        assert seen["write_status"] != "ok"
        assert seen["read_workdir"] == "ok" and seen["write_workdir"] != "ok"
        assert seen["home"] == str(data / "allocs" / "attacker" / "local")
        assert not (checkout / "written").exists()
        # what the instance wrote is root's and its own user's only
        logs = data / "allocs" / "attacker" / "logs"
        for f in (logs / "stdout.log", logs / "stderr.log"):
            st = f.stat()
            assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_uid == 0
            assert st.st_gid == h.data["gid"]
        assert stat.S_IMODE((data / "allocs" / "attacker").stat().st_mode) == 0o750
    finally:
        root_sock.close()
        await driver.stop(victim, 1)
        await driver.wait(victim)
        await driver.cleanup(victim)


async def test_two_instances_never_share_a_user(driver: TaskDriver, data: Path) -> None:
    cmd = (PY, "-c", "import os, time; print(os.getuid(), flush=True); time.sleep(60)")
    a = await driver.start(cfg(data, "a", cmd))
    b = await driver.start(cfg(data, "b", cmd))
    try:
        assert a.data["uid"] != b.data["uid"]
        assert a.data["user"].startswith("dynamic:")
    finally:
        for h in (a, b):
            await driver.stop(h, 1)
            await driver.wait(h)
            await driver.cleanup(h)


async def test_root_only_when_the_spec_asks(driver: TaskDriver, data: Path) -> None:
    cmd = (PY, "-c", "import os; print(os.getuid())")
    h, out = await run_to_end(driver, cfg(data, "r", cmd, user="root"))
    assert out.strip() == "0" and h.data["user"] == "root"
    h, out = await run_to_end(driver, cfg(data, "n", cmd, user="nobody"))
    assert out.strip() == str(65534) and h.data["user"] == "nobody"


async def test_an_unknown_user_or_an_unreachable_path_refuses_the_start(
    driver: TaskDriver, data: Path, checkout: Path
) -> None:
    with pytest.raises(StartError, match="'no-such-user' does not exist"):
        await driver.start(cfg(data, "u", (PY, "-c", "1"), user="no-such-user"))
    hidden = checkout.parent.parent / "secret.txt"  # under the closed dir, not exposed
    with pytest.raises(StartError, match="cannot read its argument") as e:
        await driver.start(cfg(data, "p", ("cat", str(hidden))))
    assert str(hidden) in str(e.value) and "user:" in str(e.value)
    closed = checkout.parent / "private"
    closed.mkdir()
    closed.chmod(0o700)
    with pytest.raises(StartError, match="cannot read its workdir"):
        await driver.start(cfg(data, "w", (PY, "-c", "1"), str(closed)))
    # nothing was left behind: no cgroup, and the uids are free again
    assert not driver.uids.used
    leftover = Cgroup(driver.cgroup_root, "p", version=driver.info.version).paths()
    assert not [p for p in leftover if Path(p).exists()]


async def test_exec_checks_run_inside_the_instance_and_a_timeout_kills_them_all(
    driver: TaskDriver, data: Path, tmp_path: Path
) -> None:
    marker = "elastin-check-" + secrets.token_hex(4)
    h = await driver.start(cfg(data, "c", (PY, "-c", "import time; time.sleep(60)")))
    try:
        env = {"PATH": os.environ["PATH"], "ONLY_THE_INSTANCE": "1"}
        report = data / "allocs" / "c" / "local" / "check.json"
        script = (
            "import json, os; json.dump({'uid': os.getuid(), 'env': sorted(os.environ), "
            "'home': os.environ.get('HOME'), "
            f"'cg': open('/proc/self/cgroup').read()}}, open({str(report)!r}, 'w'))"
        )

        async def exec_in(command: tuple[str, ...]) -> int:
            return await driver.exec_in(h, command, env)

        ok, err = await probe(
            HealthCheck(type="exec", command=(PY, "-c", script)), "", None, exec_in
        )
        assert ok, err
        seen = json.loads(report.read_text())
        assert seen["uid"] == h.data["uid"]
        assert "ONLY_THE_INSTANCE" in seen["env"] and "ELASTIN_TOKEN" not in seen["env"]
        assert seen["home"] == str(data / "allocs" / "c" / "local")  # the instance's, as it has
        assert h.alloc_id in seen["cg"]
        # a check that leaves children behind and outlives its timeout
        slow = ("sh", "-c", f'"$0" -c "import time; time.sleep(40)" {marker} & sleep 5', PY)
        ok, err = await probe(
            HealthCheck(type="exec", command=slow, timeout=0.5), "", None, exec_in
        )
        assert not ok and "within" in err
        await asyncio.sleep(0.2)
        left = [p for p in os.listdir("/proc") if p.isdigit() and marker in _cmdline(p)]
        assert not left
    finally:
        await driver.stop(h, 1)
        await driver.wait(h)
        await driver.cleanup(h)


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_rotated_log_copies_keep_the_logs_owner_and_mode(tmp_path: Path) -> None:
    """A rotated copy of an instance's log is as private as the log (0640, its group)."""
    log = tmp_path / "stdout.log"
    log.write_bytes(b"DB_PASSWORD=x\n" * 100)
    os.chown(log, 0, UID_BASE + 7)
    log.chmod(0o640)
    assert cap(log, 100, 2).rotated
    copy = tmp_path / "stdout.log.1"
    st = copy.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 0, UID_BASE + 7)
    assert copy.read_bytes().startswith(b"DB_PASSWORD=x") and log.stat().st_size == 0


async def test_a_port_below_1024_is_the_one_privilege_a_dynamic_user_may_keep(
    driver: TaskDriver, data: Path
) -> None:
    """A spec that names port 80 kept working when workloads stopped running as root: the
    instance keeps CAP_NET_BIND_SERVICE, and only when its spec names such a port."""
    with socket.socket() as s:  # a free port below 1024 on loopback
        for port in range(1023, 600, -1):
            try:
                s.bind(("127.0.0.1", port))
                break
            except OSError:
                continue
    code = f"import socket; socket.socket().bind(('127.0.0.1', {port})); print('bound')"
    config = cfg(data, "low", (PY, "-c", code))
    _, out = await run_to_end(driver, dataclasses.replace(config, bind_low_ports=True))
    assert out.strip() == "bound"
    h = await driver.start(cfg(data, "nolow", (PY, "-c", code)))
    result = await driver.wait(h)
    await driver.cleanup(h)
    assert result.exit_code == 1
    assert "Permission denied" in (data / "allocs" / "nolow" / "logs" / "stderr.log").read_text()
