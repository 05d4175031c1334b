"""`init -- CMD ARGS`: write a starting scenario for one VMM command into the project's config.

The command is traced once, in the project's root, to learn what a scenario needs to know of it:
that it opens /dev/kvm, how it exits when it runs to its end, and about how long that takes.
Then a `[tool.kvm-conformance.scenarios.NAME]` table is appended to the project's
pyproject.toml (or `[scenarios.NAME]` to its kvm-conformance.toml, created in the current
directory when the project has neither), with every optional key shown as a comment. No
snapshot is written: `kvm-conformance check --update` records the first one.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

from conformance.cli.arguments import traced_command
from conformance.gate.project import (
    CONFIG_FILE,
    PYPROJECT,
    SCENARIO_NAME,
    ProjectConfigError,
    find_config,
    load_project,
    parse_project,
)
from conformance.gate.references import shipped_reference_names
from conformance.gate.resources import kvm_missing, ptrace_missing
from conformance.gate.scenarios import TraceInterrupted, scenario_command
from conformance.model.errors import ConformanceError, KvmUnavailableError
from conformance.model.scenarios import DEFAULT_TIMEOUT_SECONDS, ProjectCommand, Scenario
from conformance.normalize.capture import capture_output
from conformance.snapshot.store import write_text

_TIMEOUT_MARGIN = 10  # the timeout written: this many times the run's duration, at least 60 s
_EXAMPLES = """\
examples:
  kvm-conformance init -- ./build/my-vmm guest.bin
  kvm-conformance init --name boot-64 -- ./build/my-vmm --long-mode guest.bin
then:
  kvm-conformance check --update     record the scenario's first snapshot
  kvm-conformance check              the gate, from then on (CI included)
"""


class InitError(ConformanceError):
    """The scenario cannot be written as asked."""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "init",
        help="trace a VMM command once and write a starting scenario for it into the "
        "project's pyproject.toml (or kvm-conformance.toml)",
        description="Trace a VMM command once, in the project's root, and write a scenario for\n"
        "it into the project's configuration: the nearest pyproject.toml gets a\n"
        "[tool.kvm-conformance.scenarios.NAME] table, a kvm-conformance.toml a\n"
        "[scenarios.NAME] one; with neither, kvm-conformance.toml is created here. The\n"
        "exit status it ended with and a timeout of ten times its run (at least 60 s)\n"
        "are written; the other keys are shown as comments. No snapshot is written.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--name",
        metavar="NAME",
        help="the scenario's name (default: the command's file name); it names its snapshot",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        help="the configuration file to write into (default: the nearest kvm-conformance.toml "
        "or pyproject.toml from here up)",
    )
    parser.set_defaults(command=_init, takes_command=True)


def _init(args: argparse.Namespace) -> int:
    command = traced_command(args)
    if not command:
        raise InitError("init: give the VMM's command after `--`")
    explicit: Path | None = args.config
    config = explicit or find_config(Path.cwd()) or Path.cwd() / CONFIG_FILE
    root = config.parent.resolve()
    if Path.cwd().resolve() != root:
        raise InitError(
            f"init: run it from the project's root, {root}: the command is written as given "
            "and runs there"
        )
    name = args.name or _name_from(command[0])
    if not SCENARIO_NAME.match(name):
        raise InitError(f"init: {name!r} cannot name a scenario: use letters, digits, . _ -")
    existing = load_project(config, root) if config.exists() else None
    if existing is not None and name in existing.scenarios:
        where = existing.scenarios[name].defined_at or str(config)
        raise InitError(f"{where}: scenario {name!r} exists already; choose another --name")
    exit_status, seconds = _trace_once(name, command, root)
    table = _table(config, name, command, exit_status, seconds)
    _append(config, table)
    written = load_project(config, root).scenarios[name]
    print(f"{written.defined_at}: wrote scenario {name!r} ({' '.join(command)})")
    print(f"  traced once: exit status {exit_status} after {seconds:.2f} s")
    print("  next: `kvm-conformance check --update` records its first snapshot")
    return 0


def _name_from(program: str) -> str:
    stem = Path(program).name.split(".")[0]
    return re.sub(r"[^A-Za-z0-9._-]", "-", stem).strip("-.") or "vmm"


def _trace_once(name: str, command: list[str], root: Path) -> tuple[int, float]:
    """The command's exit status and duration, traced as its scenario will be."""
    for missing in (kvm_missing, ptrace_missing):
        reason = missing()
        if reason is not None:
            raise KvmUnavailableError(reason)
    probe = Scenario(name, "", command=ProjectCommand(tuple(command), root))
    argv, cwd = scenario_command(probe)
    traced = capture_output(argv, {"tool": "kvm-conformance init"}, cwd=cwd)
    outcome = traced.outcome
    if outcome.result.interrupted_by is not None:
        raise TraceInterrupted(f"init {name}", outcome.result.interrupted_by)
    if outcome.message is not None:
        raise InitError(f"init: {outcome.message}")
    if outcome.result.exit_signal is not None:
        raise InitError(f"init: {command[0]} was killed by signal {outcome.result.exit_signal}")
    return outcome.exit_status, traced.seconds


def _table(config: Path, name: str, command: list[str], exit_status: int, seconds: float) -> str:
    header = (
        f"tool.kvm-conformance.scenarios.{name}"
        if config.name == PYPROJECT
        else f"scenarios.{name}"
    )
    timeout = max(int(DEFAULT_TIMEOUT_SECONDS), math.ceil(seconds * _TIMEOUT_MARGIN))
    argv = ", ".join(_toml_string(argument) for argument in command)
    shipped = ", ".join(shipped_reference_names())
    return (
        f"[{header}]\n"
        '# Written by `kvm-conformance init`; README "Project scenarios" describes every key.\n'
        f"command = [{argv}]  # runs in this file's directory\n"
        f"exit-status = {exit_status}  # how the VMM exits when it ran to its end\n"
        f"timeout = {timeout}  # seconds; a run still going then is stopped and fails\n"
        '# kvm-run = "full"  # "summary": exit counters only, "off": KVM_RUN not recorded\n'
        '# stdin = ""  # the whole standard input\n'
        f'# reference = "tiny-bios"  # a shipped QEMU reference ({shipped}) or a .yaml file\n'
        '# allowances = "qemu/NAME.allowances.yaml"  # default: beside the reference\n'
        '# disable = [{id = "KVMC008", reason = "why it does not apply"}]\n'
    )


def _toml_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = "".join(
        f"\\u{ord(char):04x}" if ord(char) < 0x20 or ord(char) == 0x7F else char for char in escaped
    )
    return f'"{escaped}"'


def _append(config: Path, table: str) -> None:
    """Append `table`, once the whole new file is known to load; written atomically."""
    try:
        old = config.read_text(encoding="utf-8") if config.exists() else ""
    except OSError as error:
        raise InitError(f"{config}: cannot read: {error.strerror}") from None
    separator = "" if not old else "\n" if old.endswith("\n") else "\n\n"
    new = f"{old}{separator}{table}"
    try:
        parse_project(new, config)
    except ProjectConfigError as error:
        raise InitError(f"{config}: the scenario cannot be added to it: {error}") from None
    write_text(config, new)
