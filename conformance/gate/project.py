"""A project's configuration: its scenarios, its snapshot directory and its lint settings.

Read from the nearest `kvm-conformance.toml` (top-level keys) or `pyproject.toml`
(`[tool.kvm-conformance]`) from the working directory up; the file's directory is the project's
root. The schema (README "Project scenarios"):

    [tool.kvm-conformance]
    snapshots = "expected"        # directory of NAME.yaml snapshots, relative to the root
    disable = [{id = "KVMC008", reason = "..."}]    # lint rules off for every scenario

    [tool.kvm-conformance.scenarios.boot]
    command = ["./build/my-vmm", "guest.bin"]   # required; runs in the root
    description = "boots the guest to its first serial line"
    stdin = ""                    # the command's whole standard input
    timeout = 60                  # seconds, then the run is stopped and fails
    kvm-run = "full"              # "summary": exit counters only; "off": KVM_RUN not recorded
    exit-status = 0               # how the VMM exits when it ran to its end
    reference = "tiny-bios"       # a shipped QEMU reference, or a .yaml file of the project
    allowances = "qemu/boot.allowances.yaml"    # default: beside the reference
    disable = [{id = "KVMC003", reason = "..."}]  # lint rules off for this scenario only

Every mistake is a ProjectConfigError naming `file:line` and what was expected (exit 2). The
repository of kvm-conformance itself is recognized by its `[project] name`: there the VMM
core's built-in scenarios are the project's, with their snapshots in `expected/`.
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import cast, get_args

from conformance.gate.references import shipped_reference_names
from conformance.gate.toml_lines import KeyPath, key_lines, line_of
from conformance.lint import RULES_BY_ID, LintConfig
from conformance.model.errors import ConformanceError, UnknownScenarioError
from conformance.model.events import KvmRunMode
from conformance.model.input_files import read_input_text
from conformance.model.scenarios import (
    DEFAULT_TIMEOUT_SECONDS,
    SCENARIOS,
    ProjectCommand,
    Scenario,
)

CONFIG_FILE = "kvm-conformance.toml"
PYPROJECT = "pyproject.toml"
PYPROJECT_TABLE = ("tool", "kvm-conformance")
THIS_PROJECT = "kvm-conformance"  # the [project] name of this repository
DEFAULT_SNAPSHOTS = "expected"
SCENARIO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_TOP_KEYS = ("snapshots", "disable", "scenarios")
_SCENARIO_KEYS = (
    "command",
    "description",
    "stdin",
    "timeout",
    "kvm-run",
    "exit-status",
    "reference",
    "allowances",
    "disable",
)
_TOML_LINE = re.compile(r"^(?P<message>.*) \(at line (?P<line>\d+), column \d+\)$")
_TOML_END = re.compile(r"^(?P<message>.*) \(at end of document\)$")


class ProjectConfigError(ConformanceError):
    """A configuration file that cannot be used; the message starts with `file:line:`."""


@dataclass(frozen=True)
class Project:
    root: Path
    config_file: Path | None  # None: no configuration found
    scenarios: Mapping[str, Scenario] = field(default_factory=lambda: MappingProxyType({}))
    snapshots: Path = Path(DEFAULT_SNAPSHOTS)  # absolute once loaded
    lint: LintConfig = field(default_factory=LintConfig)
    is_this_repository: bool = False  # kvm-conformance's own: the built-in scenarios are its

    def scenario(self, name: str) -> Scenario:
        """The project's scenario `name`, else the VMM core's built-in one of that name (asked
        for by name, it is never run unasked)."""
        found = self.scenarios.get(name) or SCENARIOS.get(name)
        if found is None:
            raise UnknownScenarioError(
                f"no scenario named {name!r} in {self.config_file or self.root} (the "
                f"project's: {', '.join(sorted(self.scenarios)) or 'none'}; built-in: "
                f"{', '.join(SCENARIOS)})"
            )
        return found

    def lint_for(self, scenario: Scenario) -> LintConfig:
        """The project's lint settings with the scenario's own disabled rules on top."""
        if not scenario.lint_disabled:
            return self.lint
        return LintConfig(
            MappingProxyType({**self.lint.disabled, **scenario.lint_disabled}),
            source=scenario.defined_at or self.lint.source,
            path=self.config_file,
        )


def find_config(start: Path) -> Path | None:
    """The nearest kvm-conformance.toml or pyproject.toml in `start` or above (the former wins
    in one directory)."""
    for directory in (start, *start.parents):
        for name in (CONFIG_FILE, PYPROJECT):
            candidate = directory / name
            if candidate.is_file():
                return candidate
    return None


def load_project(explicit: Path | None, start: Path) -> Project:
    """The project `explicit` (a configuration file) or the nearest one from `start` up
    configures; a project without configuration (no scenarios, every rule on) otherwise."""
    found = explicit if explicit is not None else find_config(start)
    if found is None:
        return Project(root=start, config_file=None, snapshots=start / DEFAULT_SNAPSHOTS)
    # A FIFO, a directory or a file that is not UTF-8: one clear line naming it.
    text = read_input_text(found, lambda line, message: _located(found, line, message))
    return parse_project(text, found)


def _located(path: Path, line: int | None, message: str) -> ProjectConfigError:
    return ProjectConfigError(f"{path}:{line}: {message}" if line else f"{path}: {message}")


def parse_project(text: str, path: Path) -> Project:
    """The project that `text`, as the configuration file `path`, configures."""
    return _Reader(text, path).project()


class _Reader:
    """One configuration file: its tomllib values, and the lines they are written on."""

    def __init__(self, text: str, path: Path) -> None:
        self.path = path
        try:
            self.document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise self._toml_error(error, text) from None
        self.lines = key_lines(text)
        self.root = path.parent.resolve()
        self.prefix: KeyPath = PYPROJECT_TABLE if path.name == PYPROJECT else ()

    def project(self) -> Project:
        table = self._table(self.prefix, self._lookup(self.prefix, {}))
        self._no_unknown_keys(self.prefix, table, _TOP_KEYS)
        lint = LintConfig(
            MappingProxyType(self._disabled((*self.prefix, "disable"), table.get("disable", []))),
            source=self._where(self.prefix),
            path=self.path,
        )
        project_table = self.document.get("project")
        this_repository = (
            self.path.name == PYPROJECT
            and isinstance(project_table, dict)
            and project_table.get("name") == THIS_PROJECT
        )
        scenarios: dict[str, Scenario] = dict(SCENARIOS) if this_repository else {}
        scenarios_path = (*self.prefix, "scenarios")
        for name, value in self._table(scenarios_path, table.get("scenarios", {})).items():
            path = (*scenarios_path, name)
            if not SCENARIO_NAME.match(name):
                raise self._error(path, f"scenario name {name!r}: use letters, digits, . _ -")
            if name in scenarios:
                raise self._error(path, f"scenario {name!r} is a built-in scenario's name")
            scenarios[name] = self._scenario(name, path, self._table(path, value))
        snapshots = self._string((*self.prefix, "snapshots"), table.get("snapshots"))
        return Project(
            root=self.root,
            config_file=self.path,
            scenarios=MappingProxyType(scenarios),
            snapshots=self.root / (snapshots or DEFAULT_SNAPSHOTS),
            lint=lint,
            is_this_repository=this_repository,
        )

    # -- one scenario --------------------------------------------------------------------

    def _scenario(self, name: str, path: KeyPath, table: dict[str, object]) -> Scenario:
        self._no_unknown_keys(path, table, _SCENARIO_KEYS)
        argv = self._command((*path, "command"), table.get("command"))
        reference, allowances = self._reference(path, table)
        return Scenario(
            name=name,
            description=self._string((*path, "description"), table.get("description"))
            or " ".join(argv),
            kvm_run=self._kvm_run((*path, "kvm-run"), table.get("kvm-run", "full")),
            reference=reference,
            allowances=allowances,
            exit_status=self._exit_status((*path, "exit-status"), table.get("exit-status", 0)),
            timeout=self._timeout((*path, "timeout"), table.get("timeout")),
            command=ProjectCommand(
                argv=argv,
                root=self.root,
                stdin=(self._string((*path, "stdin"), table.get("stdin")) or "").encode(),
            ),
            lint_disabled=MappingProxyType(
                self._disabled((*path, "disable"), table.get("disable", []))
            ),
            defined_at=self._where(path),
        )

    def _command(self, path: KeyPath, value: object) -> tuple[str, ...]:
        if value is None:
            raise self._error(path[:-1], 'needs command = ["./my-vmm", "ARG", ...]')
        if not isinstance(value, list) or not value:
            raise self._error(path, 'command must be a non-empty list such as ["./my-vmm"]')
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise self._error((*path, index), "each argument of command must be a string")
        return tuple(cast(list[str], value))

    def _reference(
        self, path: KeyPath, table: dict[str, object]
    ) -> tuple[str | Path | None, Path | None]:
        reference = self._string((*path, "reference"), table.get("reference"))
        allowances = self._string((*path, "allowances"), table.get("allowances"))
        if reference is None:
            if allowances is not None:
                raise self._error((*path, "allowances"), "allowances need a reference")
            return None, None
        chosen: str | Path
        if reference.endswith(".yaml"):
            chosen = self._project_file((*path, "reference"), reference)
        else:
            shipped = shipped_reference_names()
            if reference not in shipped:
                raise self._error(
                    (*path, "reference"),
                    f"no shipped QEMU reference named {reference!r} (shipped: "
                    f"{', '.join(shipped)}; a file of the project ends in .yaml)",
                )
            chosen = reference
        if allowances is None:
            return chosen, None
        return chosen, self._project_file((*path, "allowances"), allowances)

    def _project_file(self, path: KeyPath, relative: str) -> Path:
        found = self.root / relative
        if not found.is_file():
            raise self._error(path, f"{relative}: no such file in the project ({self.root})")
        return found

    def _kvm_run(self, path: KeyPath, value: object) -> KvmRunMode:
        modes = get_args(KvmRunMode)
        if value not in modes:
            raise self._error(path, f"kvm-run must be one of {', '.join(map(repr, modes))}")
        return cast(KvmRunMode, value)

    def _exit_status(self, path: KeyPath, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
            raise self._error(path, "exit-status must be an integer from 0 to 255")
        return value

    def _timeout(self, path: KeyPath, value: object) -> float:
        if value is None:
            return DEFAULT_TIMEOUT_SECONDS
        valid = isinstance(value, int | float) and not isinstance(value, bool)
        if not valid or not math.isfinite(float(cast(float, value))) or cast(float, value) <= 0:
            raise self._error(path, "timeout must be a positive number of seconds")
        return float(cast(float, value))

    # -- lint settings -------------------------------------------------------------------

    def _disabled(self, path: KeyPath, items: object) -> dict[str, str]:
        example = '[{id = "KVMC008", reason = "why it does not apply"}]'
        if not isinstance(items, list):
            raise self._error(path, f"disable must be a list such as {example}")
        disabled: dict[str, str] = {}
        for index, item in enumerate(items):
            where = (*path, index)
            if not isinstance(item, dict) or not isinstance(item.get("id"), str):
                raise self._error(where, f"each entry of disable needs an id: {example}")
            rule = item["id"]
            unknown = sorted(set(item) - {"id", "reason"})
            if unknown:
                raise self._error(where, f"unknown key(s) {unknown} for {rule}")
            if rule not in RULES_BY_ID:
                known = ", ".join(RULES_BY_ID)
                raise self._error(where, f"unknown rule id {rule!r} in disable (known: {known})")
            reason = item.get("reason")
            if not isinstance(reason, str) or not reason.strip():
                raise self._error(where, f"disabling {rule} needs a reason")
            disabled[rule] = reason
        return disabled

    # -- values and where they are ---------------------------------------------------------

    def _lookup(self, path: KeyPath, default: object) -> object:
        value: object = self.document
        for part in path:
            if not isinstance(value, dict) or part not in value:
                return default
            value = value[part]
        return value

    def _table(self, path: KeyPath, value: object) -> dict[str, object]:
        if not isinstance(value, dict):
            raise self._error(path, f"[{'.'.join(map(str, path))}] must be a table")
        return cast(dict[str, object], value)

    def _string(self, path: KeyPath, value: object) -> str | None:
        if value is not None and not isinstance(value, str):
            raise self._error(path, f"{path[-1]} must be a string")
        return value

    def _no_unknown_keys(
        self, path: KeyPath, table: dict[str, object], known: tuple[str, ...]
    ) -> None:
        for key in table:
            if key not in known:
                close = difflib.get_close_matches(key.replace("_", "-"), known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise self._error(
                    (*path, key), f"unknown key {key!r}{hint}; known: {', '.join(known)}"
                )

    def _where(self, path: KeyPath) -> str:
        line = line_of(self.lines, path)
        return f"{self.path}:{line}" if line is not None else str(self.path)

    def _error(self, path: KeyPath, message: str) -> ProjectConfigError:
        return ProjectConfigError(f"{self._where(path)}: {message}")

    def _toml_error(self, error: tomllib.TOMLDecodeError, text: str) -> ProjectConfigError:
        """tomllib's message carries its position in words; as `file:line:` here."""
        if (found := _TOML_LINE.match(str(error))) is not None:
            line = int(found.group("line"))
        elif (found := _TOML_END.match(str(error))) is not None:
            line = text.count("\n") + (0 if text.endswith("\n") else 1)
        else:
            return ProjectConfigError(f"{self.path}: not valid TOML: {error}")
        return ProjectConfigError(
            f"{self.path}:{max(line, 1)}: not valid TOML: {found.group('message')}"
        )
