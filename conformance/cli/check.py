"""`check`: the gate. Trace every scenario of the VMM core; compare each with expected/, with
the QEMU reference it is mapped to in traces/qemu/, and lint it.

    pass      memory-setup          8 calls   0.29 s  qemu memory-1g: FAIL  lint: ok
    FAIL      hello                70 calls   0.32 s  1 difference  lint: ok
    ...
    6 scenarios in 11.4 s: 5 passed, 1 failed

Exit 0 when every trace equals its snapshot, meets its reference and has no lint error; 1
otherwise; 2 for a usage or environment error (cli.py). Results go to stdout as each scenario
finishes; the "[2/6] hello …" progress goes to stderr, and only to a terminal, so piped output
stays clean.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TextIO

from conformance.cli.arguments import add_lint_config_option, lint_config
from conformance.compare.regression import Difference
from conformance.gate.references import REFERENCE_DIRECTORY
from conformance.gate.verdict import (
    ConformanceOutcome,
    GateReport,
    ScenarioResult,
    SnapshotOutcome,
    require_tracing_environment,
    run_gate,
)
from conformance.lint import LintConfig, Severity
from conformance.lint.output import finding_record, render_text
from conformance.model.printable import printable_text
from conformance.model.scenarios import select_scenarios
from conformance.report.deviations import render_conformance
from conformance.report.diff import render_comparison, use_color
from conformance.report.values import json_value
from conformance.snapshot.store import SnapshotStore

EXIT_DIFFERENCE = 1
DEFAULT_EXPECTED = Path("expected")  # relative to the working directory: the repository root


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "check",
        help="trace every scenario of the VMM core and compare with the expected traces "
        "(exit 0 equal, 1 a difference, 2 usage or environment error)",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        default=[],
        metavar="NAME",
        help="check only this scenario (repeatable; default: all)",
    )
    parser.add_argument(
        "--update",
        action="store_true",
        help="write the new traces as the expected ones (creates missing, rewrites changed)",
    )
    parser.add_argument("--format", choices=("text", "json"), default="text")
    parser.add_argument(
        "--expected",
        type=Path,
        default=DEFAULT_EXPECTED,
        metavar="DIR",
        help="directory of <scenario>.yaml snapshots (default: ./expected)",
    )
    parser.add_argument(
        "--references",
        type=Path,
        default=REFERENCE_DIRECTORY,
        metavar="DIR",
        help="directory of QEMU reference traces and their allowances (default: ./traces/qemu)",
    )
    add_lint_config_option(parser)
    parser.set_defaults(command=_check)


def _check(args: argparse.Namespace) -> int:
    scenarios = select_scenarios(args.scenario)
    require_tracing_environment()
    config = lint_config(args)
    store = SnapshotStore(args.expected, update=args.update)
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
            references=args.references,
            lint_config=config,
            on_start=progress.start,
            on_result=on_result,
        )
    finally:
        progress.clear()
    seconds = time.monotonic() - started
    if text:
        _print_text_summary(report, seconds, config)
    else:
        json.dump(_json_report(report, seconds), sys.stdout, indent=2)
        sys.stdout.write("\n")
    return EXIT_DIFFERENCE if report.failed else 0


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
    if differences:
        note = f"  {differences} difference{'s' if differences > 1 else ''}"
    elif result.snapshot_outcome is SnapshotOutcome.MISSING:
        note = f"  no {result.snapshot}; `kvm-conformance check --update` creates it"
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


def _print_text_summary(report: GateReport, seconds: float, config: LintConfig) -> None:
    color = use_color(sys.stdout)
    for result in report.results:
        name = result.scenario.name
        if result.comparison is not None and not result.comparison.ok:
            print()
            sys.stdout.write(render_comparison(result.comparison, color=color))
        # A scenario that deviates on purpose gets its one line; `diff` shows the deviations.
        failed_reference = result.conformance_outcome is ConformanceOutcome.FAILED
        if failed_reference and result.conformance is not None:
            print()
            sys.stdout.write(printable_text(render_conformance(result.conformance, name)))
        if result.lint_fails:
            print()
            sys.stdout.write(printable_text(render_text(result.findings, name, config)))
    for path in report.unused:
        print(f"unused: {path} (no scenario of that name; not deleted)")
    counts: dict[str, int] = {}
    for result in report.results:
        counts[result.tally] = counts.get(result.tally, 0) + 1
    tally = ", ".join(f"{count} {verdict}" for verdict, count in counts.items())
    total = len(report.results)
    print(f"{total} scenario{'s' if total != 1 else ''} in {seconds:.1f} s: {tally}")


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
