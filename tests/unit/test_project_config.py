"""A project's configuration: the schema, and every mistake named by file:line."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from conformance.cli.main import main
from conformance.gate.project import ProjectConfigError, find_config, load_project
from conformance.gate.references import shipped_references
from conformance.gate.toml_lines import KeyPath, key_lines, line_of
from conformance.model.scenarios import SCENARIOS, ProjectCommand

REPO = Path(__file__).resolve().parents[2]

FULL = """\
[project]
name = "my-vmm"

[tool.kvm-conformance]
snapshots = "tests/kvm"
disable = [{id = "KVMC008", reason = "one known kernel"}]

[tool.kvm-conformance.scenarios.boot]
command = ["./build/vmm", "guest.bin"]
description = "boots to its first serial line"
stdin = "quit\\n"
timeout = 5.5
kvm-run = "summary"
exit-status = 33
reference = "tiny-bios"
disable = [{id = "KVMC003", reason = "routes GSIs elsewhere"}]

[tool.kvm-conformance.scenarios.own-reference]
command = ["qemu-like"]
reference = "qemu/own.yaml"
allowances = "qemu/own.allowances.yaml"
"""


def _pyproject(directory: Path, text: str) -> Path:
    path = directory / "pyproject.toml"
    path.write_text(text)
    return path


def test_every_key_of_a_scenario_reaches_its_record(tmp_path: Path) -> None:
    (tmp_path / "qemu").mkdir()
    (tmp_path / "qemu" / "own.yaml").write_text("")
    (tmp_path / "qemu" / "own.allowances.yaml").write_text("")
    project = load_project(_pyproject(tmp_path, FULL), tmp_path)

    assert project.root == tmp_path.resolve() and not project.is_this_repository
    assert project.snapshots == tmp_path.resolve() / "tests" / "kvm"
    assert dict(project.lint.disabled) == {"KVMC008": "one known kernel"}
    boot = project.scenarios["boot"]
    assert boot.command == ProjectCommand(
        ("./build/vmm", "guest.bin"), tmp_path.resolve(), b"quit\n"
    )
    assert (boot.description, boot.timeout, boot.kvm_run, boot.exit_status) == (
        "boots to its first serial line",
        5.5,
        "summary",
        33,
    )
    assert boot.reference == "tiny-bios" and boot.allowances is None
    assert boot.defined_at == f"{tmp_path / 'pyproject.toml'}:8"
    assert dict(project.lint_for(boot).disabled) == {
        "KVMC008": "one known kernel",
        "KVMC003": "routes GSIs elsewhere",
    }
    own = project.scenarios["own-reference"]
    assert own.reference == tmp_path.resolve() / "qemu" / "own.yaml"
    assert own.allowances == tmp_path.resolve() / "qemu" / "own.allowances.yaml"
    assert (own.description, own.exit_status, own.kvm_run, own.timeout) == (
        "qemu-like",
        0,
        "full",
        60.0,
    )


S = "[tool.kvm-conformance.scenarios.boot]\n"
X = "command = ['x']\n"


@pytest.mark.parametrize(
    ("table", "line", "message"),
    [
        (S + "comand = ['x']\n", 5, "unknown key 'comand' (did you mean 'command'?)"),
        (S + "kvm_run = 'off'\n", 5, "did you mean 'kvm-run'?"),
        (S + "timeout = 1\n", 4, 'needs command = ["./my-vmm"'),
        (S + "command = []\n", 5, "non-empty list"),
        (S + "command = [\n  'x',\n  3,\n]\n", 7, "each argument of command must be a string"),
        (S + X + "\ntimeout = -1\n", 7, "timeout must be a positive number"),
        (S + X + "exit-status = 256\n", 6, "exit-status must be an integer from 0 to 255"),
        (S + X + "kvm-run = 'all'\n", 6, "kvm-run must be one of 'full', 'summary', 'off'"),
        (
            S + X + "reference = 'qemu-9'\n",
            6,
            "no shipped QEMU reference named 'qemu-9' (shipped: memory-1g, setup, tiny-bios",
        ),
        (S + X + "reference = 'q/none.yaml'\n", 6, "q/none.yaml: no such file in the project"),
        (S + X + "allowances = 'a.yaml'\n", 6, "allowances need a reference"),
        (
            S + X + "disable = [\n  {id = 'KVMC001', reason = 'a'},\n  {id = 'KVMC099'},\n]\n",
            8,
            "unknown rule id 'KVMC099'",
        ),
        (S + X + "disable = [{id = 'KVMC001'}]\n", 6, "disabling KVMC001 needs a reason"),
        ("[tool.kvm-conformance.scenarios.'b/d']\n" + X, 4, "scenario name 'b/d': use letters"),
        ("[tool.kvm-conformance]\nsnapshot = 'x'\n", 5, "(did you mean 'snapshots'?)"),
        ("[tool.kvm-conformance]\nscenarios = 3\n", 5, "scenarios] must be a table"),
        (S + "command = ['x'\n", 5, "not valid TOML"),
    ],
)
def test_a_mistake_is_named_by_file_line_and_what_was_expected(
    tmp_path: Path, table: str, line: int, message: str
) -> None:
    path = _pyproject(tmp_path, f"[project]\nname = 'x'\n\n{table}")
    with pytest.raises(ProjectConfigError) as raised:
        load_project(path, tmp_path)
    assert str(raised.value).startswith(f"{path}:{line}: ")
    assert message in str(raised.value)


def test_the_cli_reports_a_mistake_in_one_line_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _pyproject(tmp_path, "[tool.kvm-conformance.scenarios.boot]\ncommand = 'vmm'\n")
    monkeypatch.chdir(tmp_path)
    assert main(["check"]) == 2
    error = capsys.readouterr().err
    assert error == (
        f'kvm-conformance: {path}:2: command must be a non-empty list such as ["./my-vmm"]\n'
    )


def test_kvm_conformance_toml_uses_top_level_keys_and_wins_in_its_directory(
    tmp_path: Path,
) -> None:
    _pyproject(tmp_path, "[tool.kvm-conformance.scenarios.a]\ncommand = ['a']\n")
    own = tmp_path / "kvm-conformance.toml"
    own.write_text("snapshots = 'snaps'\n\n[scenarios.b]\ncommand = ['b']\n")
    nested = tmp_path / "src" / "deep"
    nested.mkdir(parents=True)
    assert find_config(nested) == own
    project = load_project(None, nested)
    assert list(project.scenarios) == ["b"] and project.snapshots == tmp_path.resolve() / "snaps"


def test_without_configuration_there_are_no_scenarios(tmp_path: Path) -> None:
    project = load_project(None, tmp_path)
    assert project.config_file is None and not project.scenarios
    assert project.snapshots == tmp_path / "expected"


def test_this_repository_gates_the_built_in_scenarios() -> None:
    project = load_project(None, REPO / "conformance" / "gate")
    assert project.is_this_repository
    assert dict(project.scenarios) == dict(SCENARIOS)
    assert project.snapshots == REPO / "expected"


def test_a_project_scenario_cannot_take_a_built_in_name_in_this_repository(
    tmp_path: Path,
) -> None:
    path = _pyproject(
        tmp_path,
        '[project]\nname = "kvm-conformance"\n\n[tool.kvm-conformance.scenarios.hello]\n'
        "command = ['x']\n",
    )
    with pytest.raises(ProjectConfigError, match=r":4: scenario 'hello' is a built-in"):
        load_project(path, tmp_path)


def test_the_shipped_references_are_package_data() -> None:
    names = sorted(path.name for path in shipped_references().iterdir())
    for reference in ("memory-1g", "setup", "tiny-bios"):
        assert {f"{reference}.yaml", f"{reference}.allowances.yaml", f"{reference}.log"} <= set(
            names
        )
    assert shipped_references().is_relative_to(REPO / "conformance")


# -- the line locator, against tomllib on the same text ------------------------------------

TRICKY = """\
# a comment [not.a.table]
title = "a # not a comment"
"quoted key" = 1
a.b . "c" = 'literal'
text = \"\"\"
[not.a.table]
key = 3 \\\"\"\"
\"\"\"
raw = '''
x = 1'''
items = [
  1, # c
  [2, 3],
  {id = "KVMC008", reason = "r,}]"},
]
when = 1979-05-27 07:32:00Z

[tool.kvm-conformance.scenarios.boot]
command = ["./vmm",
           "guest.bin"]
inline = { x = 1, y = { z = [1, 2] } }

[[fruit]]
name = "apple"
[fruit.physical]
color = "red"
[[fruit.variety]]
name = "red delicious"
[[fruit]]
name = "banana"
[[fruit.variety]]
name = "plantain"
"""


def _paths(value: object, path: KeyPath = ()) -> Iterator[KeyPath]:
    if path:
        yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*path, index))


@pytest.mark.parametrize("text", [TRICKY, (REPO / "pyproject.toml").read_text()])
def test_every_key_tomllib_reads_has_a_line_and_no_other(text: str) -> None:
    lines = key_lines(text)
    assert set(lines) == set(_paths(tomllib.loads(text)))


def test_lines_are_where_the_keys_are_written() -> None:
    lines = key_lines(TRICKY)
    text_lines = TRICKY.splitlines()
    for path, expected in [
        (("title",), 'title = "a # not a comment"'),
        (("a", "b", "c"), "a.b . \"c\" = 'literal'"),
        (("raw",), "raw = '''"),
        (("items", 2, "reason"), '  {id = "KVMC008", reason = "r,}]"},'),
        (("tool", "kvm-conformance", "scenarios", "boot", "command", 1), '           "guest.bin"]'),
        (("fruit", 0, "variety", 0, "name"), 'name = "red delicious"'),
        (("fruit", 1, "variety", 0, "name"), 'name = "plantain"'),
    ]:
        assert text_lines[lines[path] - 1] == expected, path
    assert line_of(lines, ("tool", "kvm-conformance", "scenarios", "boot", "nothing")) == 18
