"""The task driver's pure parts around its root processes (review of issue #11): the
environment they run with (``root_env``: none of the instance's variables under their own
names), what goes into a message (``printable``), and the one warning an agent without the
log timestamper gives."""

from __future__ import annotations

import logging
import subprocess

import pytest

from elastin.agent.drivers import task
from elastin.agent.drivers.base import StartError
from elastin.agent.drivers.task import KEPT, SAFE_PATH, SH, TaskDriver, root_env
from elastin.model.text import printable

DANGEROUS = {
    "PERL5LIB": "/home/w/lib",
    "PERLLIB": "/tmp",
    "PERL5OPT": "-Mevil",
    "PERL5DB": "BEGIN{}",
    "PATH": "/home/w/bin:/usr/bin",
    "LD_PRELOAD": "/tmp/x.so",
    "LD_LIBRARY_PATH": "/tmp",
}


def test_root_parts_see_a_fixed_path_and_only_renamed_variables() -> None:
    env, restore = root_env(DANGEROUS)
    assert env["PATH"] == SAFE_PATH
    assert set(env) == {"PATH"} | {KEPT + k for k in DANGEROUS}
    assert all(env[KEPT + k] == v for k, v in DANGEROUS.items())
    assert restore[:2] == [SH, "-c"] and restore[3] == "elastin-env" and restore[-1] == "--"
    assert sorted(restore[4:-1]) == sorted(DANGEROUS)


def test_the_restorer_gives_the_program_its_environment_back() -> None:
    tricky = {
        "ELASTIN_KEPT_A": "the spec's own",  # given its name after A, which it would hide
        **DANGEROUS,
        "A": 'a "b" $c `d`\nnewline',
        "EMPTY": "",
        "IFS": "x",
    }
    env, restore = root_env(tricky)
    got = subprocess.run(
        [*restore, "/usr/bin/env", "-0"], env=env, capture_output=True, check=True
    ).stdout
    seen = dict(item.split("=", 1) for item in got.decode().split("\0") if item)
    seen.pop("PWD", None)  # the shell's own
    assert seen == tricky


def test_a_name_no_shell_can_hold_is_refused() -> None:
    with pytest.raises(StartError, match="not a valid environment variable name"):
        root_env({"A-B": "1"})


def test_printable_escapes_what_a_terminal_would_obey() -> None:
    assert printable("ok /usr/bin/python3 -m http.server") == "ok /usr/bin/python3 -m http.server"
    assert printable("evil\x1b[2J\r\nforged line\u202e") == "evil\\x1b[2J\\r\\nforged line\\u202e"
    assert printable("x" * 500, 10) == "x" * 9 + "…"


def test_an_agent_without_the_timestamper_says_so_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(task, "PERL", "/nonexistent/perl")
    with caplog.at_level(logging.WARNING, logger="elastin.agent.drivers.task"):
        d = TaskDriver("elastin-test-unused")
    assert not d.stamp_logs
    (rec,) = [r for r in caplog.records if r.name == "elastin.agent.drivers.task"]
    assert "no timestamps" in rec.getMessage() and "perl" in rec.getMessage()
    assert d.fingerprint().attributes["logs.timestamps"].startswith("0 (")
