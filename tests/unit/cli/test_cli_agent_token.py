"""The agent's token never has to go on a command line (every local user reads those)."""

from __future__ import annotations

import os
from pathlib import Path

from click.testing import CliRunner

from elastin.cli.main import cli


def test_a_token_file_others_may_read_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_text("secret\n")
    os.chmod(f, 0o644)
    r = CliRunner().invoke(cli, ["agent", "--server", "http://127.0.0.1:1", "--token-file", str(f)])
    assert r.exit_code == 2 and "readable by other users" in r.output and "chmod 600" in r.output
    assert "secret" not in r.output


def test_an_empty_or_missing_token_file_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_text("\n")
    os.chmod(f, 0o600)
    r = CliRunner().invoke(cli, ["agent", "--server", "http://127.0.0.1:1", "--token-file", str(f)])
    assert r.exit_code == 2 and "is empty" in r.output
    missing = str(tmp_path / "nope")
    r = CliRunner().invoke(
        cli, ["agent", "--server", "http://127.0.0.1:1", "--token-file", missing]
    )
    assert r.exit_code == 2 and "cannot read the token file" in r.output


def test_help_steers_away_from_a_token_on_the_command_line() -> None:
    r = CliRunner().invoke(cli, ["agent", "--help"])
    assert "--token-file" in r.output and "ps" in r.output
