"""The task driver's root parts never run what a workload planted (review of issue #11).

The shim (``sh``, ``unshare``, ``mount``, ``mkdir``), the log timestamper (Perl) and
``setpriv`` run as root; the spec's environment names directories a workload may write (its
HOME, ``/tmp``). Perl honours ``PERL5LIB``, the shell finds ``mount`` on ``PATH``, the dynamic
loader honours ``LD_PRELOAD`` — so the root parts must see none of the instance's
environment, and the program must still get all of it, unchanged.
"""

from __future__ import annotations

import asyncio
import os
import textwrap
from pathlib import Path

import pytest

from elastin.agent.drivers.base import ExecOutput, InstanceConfig
from elastin.agent.drivers.task import TaskDriver
from elastin.agent.logfiles import unstamp
from elastin.model.resources import Resources

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for cgroups and users"),
]

WAIT = 30  # seconds: a bound for what ends at once on a sane machine
LOGS = ("stdout.log", "stderr.log")

# The first run plants a strict.pm (loaded by any `use strict`) and a `mount` and a `mkdir`
# in directories of its own that the spec names in PERL5LIB and PATH; each leaves a file
# behind when it runs as root. The second run shows what the program sees.
PLANT = textwrap.dedent(
    r"""
    set -e
    mkdir -p "$HOME/lib" "$HOME/bin"
    cat > "$HOME/lib/strict.pm" <<EOF
    package strict;
    BEGIN { if (\$< == 0 || \$> == 0) { open(my \$f, '>', "$HOME/pwned-perl"); close \$f; } }
    sub import {} sub unimport {} sub bits { 0 }
    1;
    EOF
    for tool in mount mkdir; do
      printf '#!/bin/sh\n[ "$(id -u)" != 0 ] || : > "%s/pwned-%s"\nexec /bin/%s "$@"\n' \
        "$HOME" "$tool" "$tool" > "$HOME/bin/$tool"
      chmod 755 "$HOME/bin/$tool"
    done
    echo planted
    """
)
SHOW = 'printf "PERL5LIB=%s\\nPATH=%s\\nLD_PRELOAD=%s\\n" "$PERL5LIB" "$PATH" "$LD_PRELOAD"'


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    (d / "allocs").mkdir(parents=True)
    d.chmod(0o700)
    return d


def cfg(data: Path, alloc: str, script: str, **env: str) -> InstanceConfig:
    return InstanceConfig(
        alloc,
        alloc,
        ("/bin/sh", "-c", script),
        env,
        "",
        Resources(200, 64 << 20, 0),
        str(data / "allocs" / alloc),
        pids_limit=64,
    )


async def run(driver: TaskDriver, config: InstanceConfig) -> tuple[str, str]:
    """Start, wait for the end; what this run wrote to stdout and stderr."""
    logs = Path(config.alloc_dir) / "logs"
    before = {n: (logs / n).stat().st_size if (logs / n).exists() else 0 for n in LOGS}
    h = await driver.start(config)
    async with asyncio.timeout(WAIT):
        result = await driver.wait(h)
    await driver.cleanup(h)
    out, err = (unstamp((logs / n).read_bytes()[before[n] :]).decode() for n in LOGS)
    assert result.exit_code == 0, (result, err)
    return out, err


@pytest.mark.parametrize("stamp", [True, False], ids=["timestamper", "plain"])
async def test_what_a_workload_plants_on_its_paths_never_runs_as_root(
    driver: TaskDriver, data: Path, stamp: bool
) -> None:
    if stamp and not driver.stamp_logs:
        pytest.skip("no Perl with Time::HiRes here (Debian's perl package)")
    driver.stamp_logs = stamp
    home = data / "allocs" / "w" / "local"
    # a library the loader cannot find says so on stderr, once per process that loads it
    env = {
        "PERL5LIB": f"{home}/lib",
        "PATH": f"{home}/bin:/usr/local/bin:/usr/bin:/bin",
        "LD_PRELOAD": "/nonexistent/elastin-test-preload.so",
    }
    out, _ = await run(driver, cfg(data, "w", PLANT, **env))
    assert out.strip().endswith("planted")
    out, err = await run(driver, cfg(data, "w", SHOW, **env))
    planted = sorted(p.name for p in home.iterdir() if p.name.startswith("pwned-"))
    assert planted == [], f"ran as root: {planted}"
    assert out.splitlines() == [f"{k}={v}" for k, v in env.items()]  # the program's own
    # the program alone loaded the spec's LD_PRELOAD: no root part of the driver did
    assert err.count("elastin-test-preload.so") == 1, err


async def test_a_root_workload_still_gets_its_environment(driver: TaskDriver, data: Path) -> None:
    env = {"PERL5LIB": "/opt/lib", "PATH": "/usr/bin:/bin", "LD_PRELOAD": ""}
    config = cfg(data, "r", SHOW, **env)
    config = InstanceConfig(**{**config.__dict__, "user": "root"})
    out, _ = await run(driver, config)
    assert out.splitlines() == [f"{k}={v}" for k, v in env.items()]


async def test_exec_runs_nothing_planted_as_root_and_finds_commands_on_the_specs_path(
    driver: TaskDriver, data: Path
) -> None:
    home = data / "allocs" / "x" / "local"
    env = {"PATH": f"{home}/bin:/usr/bin:/bin", "LD_PRELOAD": "/nonexistent/elastin-exec.so"}
    h = await driver.start(cfg(data, "x", 'mkdir -p "$HOME/bin"; exec sleep 600', **env))
    try:
        tool = home / "bin" / "hello-elastin"
        async with asyncio.timeout(WAIT):
            while not (home / "bin").is_dir():
                await asyncio.sleep(0.02)
        tool.write_text('#!/bin/sh\necho "hello as $(id -u) with $LD_PRELOAD"\n')
        tool.chmod(0o755)
        proc = await driver.exec_start(h, ("hello-elastin",), env)
        items = [i async for i in driver.exec_output(proc, WAIT)]
        out, err = (
            b"".join(i.data for i in items if isinstance(i, ExecOutput) and i.stream == name)
            for name in ("stdout", "stderr")
        )
        assert out == f"hello as {h.data['uid']} with {env['LD_PRELOAD']}\n".encode()
        # loaded by the command's own processes (its sh, and `id`), never by nsenter or setpriv
        assert err.count(b"elastin-exec.so") == 2, err
    finally:
        await driver.stop(h, 1)
        await driver.wait(h)
        await driver.cleanup(h)
