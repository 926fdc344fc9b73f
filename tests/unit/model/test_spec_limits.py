"""What a spec may hold: a command is a string or a list of strings, never a number; the file,
a workload's environment and its command line stay within limits that a Linux exec can carry
(docs/spec.md, "Limits"), each refused with the limit and the value before anything changes.
And a task's default working directory: the spec file's directory, as compose's is."""

from __future__ import annotations

from pathlib import Path

import pytest

from elastin.model.errors import SpecError, SpecIssue
from elastin.model.spec import (
    MAX_ARG_BYTES,
    MAX_ARGV_BYTES,
    MAX_ENV_BYTES,
    MAX_ENV_ENTRIES,
    MAX_SPEC_BYTES,
    load_spec,
    parse_spec,
)

HEAD = "app: a\nservices:\n  w:\n"
W = HEAD + "    command: x\n"


def issues(text: str) -> list[SpecIssue]:
    with pytest.raises(SpecError) as err:
        parse_spec(text, file="t.yaml", base_dir="/srv/app")
    return err.value.issues


def one(text: str) -> SpecIssue:
    found = issues(text)
    assert len(found) == 1, [i.render() for i in found]
    return found[0]


# command -------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["42", "4.5", "true", "{a: 1}"])
def test_a_command_that_is_no_string_or_list_is_refused(value: str) -> None:
    issue = one(HEAD + f"    command: {value}\n")
    assert issue.path == "services.w.command" and (issue.line, issue.column) == (4, 14)
    assert "must be a string or a list" in issue.message
    assert "command: python3 app.py" in issue.hint


def test_a_quoted_number_is_a_program_name() -> None:
    w = parse_spec(HEAD + '    command: "42"\n').workloads[0]
    assert w.command == ("42",)


@pytest.mark.parametrize(
    ("items", "index", "words"),
    [
        ("[42, x]", 0, "the program must be a name or a path"),
        ("[x, true]", 1, "must be a string"),
        ("[x, ~]", 1, "must not be empty"),
        ("[x, [a, b]]", 1, "must be a string, not a list"),
        ("[x, {a: 1}]", 1, "must be a string, not a mapping"),
    ],
)
def test_list_items_of_a_command_must_be_strings(items: str, index: int, words: str) -> None:
    issue = one(HEAD + f"    command: {items}\n")
    assert issue.path == f"services.w.command[{index}]"
    assert words in issue.message, issue.render()


def test_numbers_as_arguments_keep_their_text() -> None:
    w = parse_spec(HEAD + "    command: [sleep, 010]\n    args: [1e3]\n").workloads[0]
    assert w.command == ("sleep", "010", "1e3")


def test_an_empty_command_is_refused() -> None:
    for value in ('""', "[]", "~"):
        issue = one(HEAD + f"    command: {value}\n")
        assert "empty" in issue.message, issue.render()


# limits --------------------------------------------------------------------------------------
def test_a_spec_file_over_1_mib_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    big = W + "    env:\n" + "".join(f"      V{i}: {'x' * 40}\n" for i in range(25_000))
    assert len(big) > MAX_SPEC_BYTES
    issue = one(big)
    assert issue.message == f"the spec is {len(big)} bytes, over the limit of 1048576 (1 MiB)"
    assert issue.file == "t.yaml" and issue.hint
    path = tmp_path / "big.yaml"
    path.write_text(big)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert "over the limit of 1048576" in err.value.issues[0].message


def test_a_5_mb_spec_with_25k_variables_is_refused() -> None:
    """The finding: such a spec replaced a running service with one that failed "Argument
    list too long"; now it is refused (nothing changes)."""
    env = "".join(f"      VAR_{i}: {'v' * 180}\n" for i in range(25_000))
    with pytest.raises(SpecError) as err:
        parse_spec(W + "    env:\n" + env, file="big.yaml")
    assert "over the limit" in str(err.value)


def test_too_many_variables() -> None:
    env = "".join(f"      V{i}: x\n" for i in range(MAX_ENV_ENTRIES + 1))
    issue = one(W + "    env:\n" + env)
    assert issue.path == "services.w.env" and issue.line == 6
    assert issue.message == f"{MAX_ENV_ENTRIES + 1} variables are over the limit of 4096"
    ok = "".join(f"      V{i}: x\n" for i in range(MAX_ENV_ENTRIES))
    assert len(parse_spec(W + "    env:\n" + ok).workloads[0].env) == MAX_ENV_ENTRIES


def test_one_variable_over_128_kib() -> None:
    value = "x" * MAX_ARG_BYTES
    issue = one(W + f"    env: {{BIG: {value}, SMALL: y}}\n")
    assert issue.path == "services.w.env.BIG"
    assert "131077 bytes (128 KiB), over the limit of 131072 bytes (128 KiB)" in issue.message
    assert "MAX_ARG_STRLEN" in issue.message and "file" in issue.hint
    fits = "x" * (MAX_ARG_BYTES - len("BIG=") - 1)
    parse_spec(W + f"    env: {{BIG: {fits}}}\n")


def test_the_environment_over_256_kib() -> None:
    value = "x" * 100_000
    issue = one(W + f"    env: {{A: {value}, B: {value}, C: {value}}}\n")
    assert issue.path == "services.w.env"
    assert "the environment is 300009 bytes" in issue.message
    assert f"over the limit of {MAX_ENV_BYTES} bytes (256 KiB)" in issue.message


def test_one_argument_over_128_kib() -> None:
    arg = "a" * MAX_ARG_BYTES
    issue = one(W + f"    args: [ok, {arg}]\n")
    assert issue.path == "services.w.args[1]" and "over the limit of 131072" in issue.message
    issue = one(HEAD + f"    command: [echo, {arg}]\n")
    assert issue.path == "services.w.command[1]"
    issue = one(HEAD + f"    command: echo {arg}\n")
    assert issue.path == "services.w.command"
    issue = one(W + f"    health: {{exec: [check, {arg}]}}\n")
    assert issue.path == "services.w.health.exec[1]"


def test_the_command_line_over_256_kib() -> None:
    chunk = "a" * 100_000
    issue = one(HEAD + f"    command: [echo, {chunk}, {chunk}]\n    args: [{chunk}]\n")
    assert issue.path == "services.w.command"
    assert f"over the limit of {MAX_ARGV_BYTES} bytes (256 KiB)" in issue.message
    assert "ARG_MAX" in issue.message


def test_every_limit_at_once_in_file_order() -> None:
    value = "x" * MAX_ARG_BYTES
    found = issues(
        "app: a\nservices:\n"
        f"  w:\n    command: 42\n    env: {{A: {value}}}\n"
        f"  v:\n    command: [x, {value}]\n"
    )
    assert [i.path for i in found] == [
        "services.w.command",
        "services.w.env.A",
        "services.v.command[1]",
    ]


# the default working directory ----------------------------------------------------------------
def test_a_tasks_default_workdir_is_the_spec_files_directory(tmp_path: Path) -> None:
    spec = tmp_path / "shop.yaml"
    spec.write_text(
        "app: a\nservices:\n  api:\n    command: python3 api.py\n"
        "  web:\n    command: python3 web.py\n    workdir: ./web\n"
        "  box:\n    kind: container\n    image: alpine\n"
        "jobs:\n  report:\n    command: python3 report.py\n"
    )
    app = load_spec(spec)
    workdirs = {w.name: w.workdir for w in app.workloads}
    assert workdirs == {
        "api": str(tmp_path),
        "web": str(tmp_path / "web"),
        "box": "",  # a container's working directory is its image's
        "report": str(tmp_path),
    }


def test_without_a_spec_directory_the_instance_keeps_its_own() -> None:
    """The API or the SDK without a base directory: the instance's private directory."""
    assert parse_spec(W).workloads[0].workdir == ""
    assert parse_spec(W, base_dir="/srv/app/").workloads[0].workdir == "/srv/app"
