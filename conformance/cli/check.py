"""`check`: the gate. Trace every scenario of the project (those its configuration names; in
kvm-conformance's own repository, the VMM core's), compare each with its snapshot, hold it
against the QEMU reference it names, and lint it.

    pass      memory-setup          8 calls   0.29 s  qemu memory-1g: FAIL  lint: ok
    FAIL      hello                70 calls   0.32 s  1 difference  lint: ok
    ...
    6 scenarios in 11.4 s: 5 passed, 1 failed

Exit 0 when every trace equals its snapshot, meets its reference and has no lint error; 1
otherwise (a scenario whose VMM did not run to its end included); 2 for a usage, configuration
or environment error (cli.py); 128 + the signal when interrupted (nothing is written then).
Results go to stdout as each scenario finishes; the "[2/6] hello …" progress goes to stderr,
and only to a terminal, so piped output stays clean.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import TextIO

from conformance.cli.configuration import add_config_option, project
from conformance.compare.regression import Difference
from conformance.gate.project import Project
from conformance.gate.scenarios import TraceInterrupted
from conformance.gate.verdict import (
    ConformanceOutcome,
    GateReport,
    ScenarioResult,
    SnapshotOutcome,
    require_tracing_environment,
    run_gate,
)
from conformance.lint import Severity
from conformance.lint.output import finding_record, render_text
from conformance.model.errors import ConformanceError
from conformance.model.scenarios import SCENARIOS, Scenario, select_scenarios
from conformance.report.deviations import render_conformance
from conformance.report.diff import render_comparison, use_color
from conformance.report.values import json_value
from conformance.snapshot.store import SnapshotStore, running_on_ci

EXIT_DIFFERENCE = 1
_EXAMPLES = """\
examples:
  kvm-conformance check                      every scenario of the project
  kvm-conformance check --scenario boot      one of them
  kvm-conformance check --update             create or rewrite the snapshots after a change
  kvm-conformance check --pending            write differing ones as NAME.yaml.new, then
  kvm-conformance review                     accept or reject each

A project's scenarios are [tool.kvm-conformance.scenarios.NAME] tables in its pyproject.toml
(or [scenarios.NAME] in a kvm-conformance.toml); `kvm-conformance init -- CMD` writes one.
"""


class ExpectedDirectoryError(ConformanceError):
    """The snapshot directory named to compare against does not exist."""


class NoScenariosError(ConformanceError):
    """The project configures no scenario to check."""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "check",
        help="trace every scenario of the project and compare with its snapshot, QEMU "
        "reference and the usage rules (exit 0 all pass, 1 a failure, 2 usage or environment "
        "error)",
        description="Trace every scenario of the project (its configuration's; in\n"
        "kvm-conformance's own repository the VMM core's) and judge each trace three ways:\n"
        "it equals its snapshot, fits inside the QEMU reference it names as that reference's\n"
        "allowances permit, and raises no error from the KVM usage rules. A scenario whose\n"
        "VMM does not run to its end (another exit status, its timeout, a signal) fails,\n"
        "and its trace is neither compared nor written. Nothing is written before every\n"
        "scenario has run.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--scenario",
        action="append",
        default=[],
        metavar="NAME",
        help="check only this scenario (repeatable; default: all)",
    )
    writes = parser.add_mutually_exclusive_group()
    writes.add_argument(
        "--update",
        action="store_true",
        help="write the new traces as the snapshots (creates missing, rewrites changed), once "
        "every scenario has run to its end",
    )
    writes.add_argument(
        "--pending",
        action="store_true",
        help="write each missing or differing snapshot beside it as NAME.yaml.new, for "
        "`kvm-conformance review`",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="write with --update or --pending even when CI is set (on CI nothing is written "
        "otherwise)",
    )
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument(
        "--builtin",
        action="store_true",
        help="check the VMM core's built-in scenarios instead of the project's (outside "
        "kvm-conformance's repository, with --expected DIR)",
    )
    parser.add_argument(
        "--expected",
        type=Path,
        metavar="DIR",
        help="directory of NAME.yaml snapshots (default: the project's `snapshots`, "
        "./expected in its root)",
    )
    parser.add_argument(
        "--references",
        type=Path,
        metavar="DIR",
        help="look up the QEMU references scenarios name by name in DIR (default: those "
        "shipped with kvm-conformance)",
    )
    add_config_option(parser)
    parser.set_defaults(command=_check)


def _check(args: argparse.Namespace) -> int:
    chosen = project(args)
    table, directory = _scenarios_and_snapshots(args, chosen)
    scenarios = select_scenarios(args.scenario, table)
    update, pending = _writes(args)
    if args.expected is not None and not update and not args.expected.is_dir():
        raise ExpectedDirectoryError(
            f"{args.expected}: no such directory of snapshots; create it with --update"
        )
    require_tracing_environment()
    store = SnapshotStore(directory, update=update)
    progress = _Progress(sys.stderr, len(scenarios))
    started = time.monotonic()
    text = args.format == "text"

    def on_result(result: ScenarioResult) -> None:
        progress.clear()  # a result line must not land after the "…" of the progress line
        if text:
            _print_line(result)

    try:
        report = run_gate(
            scenarios,
            store,
            lint_for=chosen.lint_for,
            references=args.references,
            pending=pending,
            every_scenario=not args.scenario,
            on_start=progress.start,
            on_result=on_result,
        )
    except KeyboardInterrupt as interrupt:
        progress.clear()
        return _interrupted(interrupt)
    finally:
        progress.clear()
    seconds = time.monotonic() - started
    if text:
        _print_text_summary(report, seconds)
    else:
        json.dump(_json_report(report, seconds), sys.stdout, indent=2)
        sys.stdout.write("\n")
    return EXIT_DIFFERENCE if report.failed else 0


def _scenarios_and_snapshots(
    args: argparse.Namespace, chosen: Project
) -> tuple[dict[str, Scenario], Path]:
    """Which scenarios to check and where their snapshots are. The VMM core's own scenarios
    never write into a project's directory unless it is named with --expected."""
    explicit: Path | None = args.expected
    if args.builtin:
        if explicit is None and not chosen.is_this_repository:
            raise NoScenariosError(
                "--builtin: give the directory of the built-in scenarios' snapshots with "
                "--expected DIR (they are not written into the project's own)"
            )
        return dict(SCENARIOS), explicit or chosen.snapshots
    if not chosen.scenarios:
        where = (
            f"{chosen.config_file}: no scenarios configured"
            if chosen.config_file is not None
            else f"no kvm-conformance.toml or pyproject.toml in {Path.cwd()} or above"
        )
        raise NoScenariosError(
            f"{where}; add a [tool.kvm-conformance.scenarios.NAME] table "
            "(`kvm-conformance init -- CMD ARGS` writes one), or check the VMM core's own "
            "scenarios with --builtin --expected DIR"
        )
    return dict(chosen.scenarios), explicit or chosen.snapshots


def _writes(args: argparse.Namespace) -> tuple[bool, bool]:
    """(update, pending) as asked, unless CI is set and --force is not given: then neither,
    and stderr says so."""
    update, pending = bool(args.update), bool(args.pending)
    if (update or pending) and running_on_ci() and not args.force:
        asked = "--update" if update else "--pending"
        print(
            f"kvm-conformance: CI is set: {asked} writes nothing on CI (add --force to write); "
            "comparing only",
            file=sys.stderr,
        )
        return False, False
    return update, pending


def _interrupted(interrupt: KeyboardInterrupt) -> int:
    signum = interrupt.signum if isinstance(interrupt, TraceInterrupted) else signal.SIGINT
    what = f"{interrupt}" if isinstance(interrupt, TraceInterrupted) else "interrupted"
    print(f"kvm-conformance: {what}; no snapshot written", file=sys.stderr)
    return 128 + signum


class _Progress:
    """The `[2/6] hello …` line on a terminal, rewritten in place and erased when done."""

    def __init__(self, stream: TextIO, total: int) -> None:
        self._stream = stream
        self._total = total
        self._shown = stream.isatty()

    def start(self, index: int, scenario: str) -> None:
        if self._shown:
            self._stream.write(f"\r\033[K[{index + 1}/{self._total}] {scenario} …")
            self._stream.flush()

    def clear(self) -> None:
        if self._shown:
            self._stream.write("\r\033[K")
            self._stream.flush()


def _print_line(result: ScenarioResult) -> None:
    differences = len(result.comparison.differences) if result.comparison is not None else 0
    note = ""
    if result.run_failure is not None:
        note = "  did not run to its end: not compared, not written (below)"
    elif differences:
        note = f"  {differences} difference{'s' if differences > 1 else ''}"
    elif result.snapshot_outcome is SnapshotOutcome.MISSING:
        note = f"  no {result.snapshot}; `kvm-conformance check --update` creates it"
    if result.pending is not None:
        note += f"  (pending: {result.pending.name})"
    if result.host_differs:
        note += "  (another host's CPUID: its inputs not compared)"
    conformance = result.conformance_outcome
    if conformance is not None and result.conformance is not None:
        reference = result.conformance.reference.path
        name = reference.stem if reference is not None else "reference"
        note += f"  qemu {name}: {conformance.value}"
    note += f"  lint: {_lint_tally(result)}"
    print(
        f"{result.snapshot_outcome.value:<9} {result.scenario.name:<20} {result.calls:>7} calls "
        f"{result.seconds:>6.2f} s{note}",
        flush=True,  # each line as its scenario ends, also through a pipe (CI logs)
    )


def _lint_tally(result: ScenarioResult) -> str:
    errors = sum(1 for finding in result.findings if finding.severity is Severity.ERROR)
    warnings = len(result.findings) - errors
    if not result.findings:
        return "ok"
    return f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}"


def _print_text_summary(report: GateReport, seconds: float) -> None:
    color = use_color(sys.stdout)
    for result in report.results:
        name = result.scenario.name
        if result.run_failure is not None:
            print()
            print(result.run_failure)
        if result.comparison is not None and not result.comparison.ok:
            print()
            sys.stdout.write(render_comparison(result.comparison, color=color))
        # A scenario that deviates on purpose gets its one line; `diff` shows the deviations.
        failed_reference = result.conformance_outcome is ConformanceOutcome.FAILED
        if failed_reference and result.conformance is not None:
            print()
            sys.stdout.write(render_conformance(result.conformance, name))
        if result.lint_fails:
            print()
            sys.stdout.write(render_text(result.findings, name, result.lint_config))
    for path in report.unused:
        print(f"unused: {path} (no scenario of that name; not deleted)")
    counts: dict[str, int] = {}
    for result in report.results:
        counts[result.tally] = counts.get(result.tally, 0) + 1
    tally = ", ".join(f"{count} {verdict}" for verdict, count in counts.items())
    total = len(report.results)
    print(f"{total} scenario{'s' if total != 1 else ''} in {seconds:.1f} s: {tally}")
    pending = [result.pending for result in report.results if result.pending is not None]
    if pending:
        print(f"{len(pending)} pending snapshot(s) written; `kvm-conformance review` shows each")
    elif any(r.snapshot_outcome is SnapshotOutcome.MISSING for r in report.results):
        print("missing snapshots: `kvm-conformance check --update` creates them")


def _json_report(report: GateReport, seconds: float) -> dict[str, object]:
    return {
        "ok": not report.failed,
        "seconds": round(seconds, 3),
        "scenarios": [_json_result(result) for result in report.results],
        "unused": [str(path) for path in report.unused],
    }


def _json_result(result: ScenarioResult) -> dict[str, object]:
    conformance = result.conformance
    outcome = result.conformance_outcome
    return {
        "scenario": result.scenario.name,
        "result": result.snapshot_outcome.name.lower(),
        "snapshot": str(result.snapshot),
        "calls": result.calls,
        "host_cpuid_differs": result.host_differs,
        "run_failure": result.run_failure,
        "pending": None if result.pending is None else str(result.pending),
        "seconds": round(result.seconds, 3),
        "differences": [
            _json_difference(difference)
            for difference in (result.comparison.differences if result.comparison else [])
        ],
        "conformance": None
        if conformance is None or outcome is None
        else {
            "reference": str(conformance.reference.path),
            "ok": conformance.ok,
            "outcome": outcome.name.lower(),
            "deviations_not_allowed": len(conformance.failures),
            "deviations_allowed": len(conformance.deviations) - len(conformance.failures),
        },
        "lint": [finding_record(finding) for finding in result.findings],
    }


def _json_difference(difference: Difference) -> dict[str, object]:
    return {
        "kind": difference.kind.value,
        "thread": difference.thread,
        "call": difference.call_name,
        "expected_index": difference.expected_index,
        "actual_index": difference.actual_index,
        "expected_line": difference.expected_line,
        "field": difference.path,
        "expected": json_value(difference.expected),
        "actual": json_value(difference.actual),
    }
