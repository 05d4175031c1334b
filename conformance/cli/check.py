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

from conformance.compare.regression import ABSENT, Compared, Difference
from conformance.gate import verdict as gate
from conformance.gate.references import REFERENCE_DIRECTORY
from conformance.lint import LintConfig, Severity, find_pyproject, has_errors, load_config
from conformance.lint.output import render_text
from conformance.model.document import Value
from conformance.report.deviations import render_conformance
from conformance.report.diff import render_comparison, use_color
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
        help="directory of QEMU reference traces and their rules (default: ./traces/qemu)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="PYPROJECT",
        help="[tool.kvm-conformance] lint settings (default: the nearest pyproject.toml)",
    )
    parser.set_defaults(command=_check)


def _check(args: argparse.Namespace) -> int:
    scenarios = gate.select_scenarios(args.scenario)
    gate.require_tracing_environment()
    lint_config = _lint_config(args.config)
    store = SnapshotStore(args.expected, update=args.update)
    progress = _Progress(sys.stderr, len(scenarios))
    started = time.monotonic()
    text = args.format == "text"

    def on_result(result: gate.ScenarioResult) -> None:
        progress.clear()  # a result line must not land after the "…" of the progress line
        if text:
            _print_line(result)

    try:
        report = gate.run_gate(
            scenarios,
            store,
            references=args.references,
            lint_config=lint_config,
            on_start=progress.start,
            on_result=on_result,
        )
    finally:
        progress.clear()
    seconds = time.monotonic() - started
    if text:
        _print_text_summary(report, seconds, lint_config)
    else:
        json.dump(_json_report(report, seconds), sys.stdout, indent=2)
        sys.stdout.write("\n")
    return EXIT_DIFFERENCE if report.failed else 0


def _lint_config(path: Path | None) -> LintConfig:
    found = path if path is not None else find_pyproject(Path.cwd())
    return load_config(found) if found is not None else LintConfig()


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


def _print_line(result: gate.ScenarioResult) -> None:
    differences = len(result.comparison.differences) if result.comparison is not None else 0
    note = ""
    if differences:
        note = f"  {differences} difference{'s' if differences > 1 else ''}"
    elif result.verdict is gate.Verdict.MISSING:
        note = f"  no {result.snapshot}; `kvm-conformance check --update` creates it"
    if result.host_differs:
        note += "  (another host's CPUID: its inputs not compared)"
    if result.conformance is not None:
        reference = result.conformance.reference.path
        name = reference.stem if reference is not None else "reference"
        verdict = "ok" if result.conformance.ok else "FAIL"
        if not result.conformance.ok and result.deviates_on_purpose:
            verdict = "deviates on purpose"
        note += f"  qemu {name}: {verdict}"
    note += f"  lint: {_lint_tally(result)}"
    print(
        f"{result.verdict.value:<9} {result.scenario:<20} {result.calls:>7} calls "
        f"{result.seconds:>6.2f} s{note}",
        flush=True,  # each line as its scenario ends, also through a pipe (CI logs)
    )


def _lint_tally(result: gate.ScenarioResult) -> str:
    errors = sum(1 for finding in result.findings if finding.severity is Severity.ERROR)
    warnings = len(result.findings) - errors
    if not result.findings:
        return "ok"
    return f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}"


def _print_text_summary(report: gate.GateReport, seconds: float, lint_config: LintConfig) -> None:
    color = use_color(sys.stdout)
    for result in report.results:
        if result.comparison is not None and not result.comparison.ok:
            print()
            sys.stdout.write(render_comparison(result.comparison, color=color))
        # A scenario that deviates on purpose gets its one line; `diff` shows the deviations.
        if result.conformance_fails and result.conformance is not None:
            print()
            sys.stdout.write(render_conformance(result.conformance, result.scenario))
        if has_errors(result.findings):
            print()
            sys.stdout.write(render_text(result.findings, result.scenario, lint_config))
    for path in report.unused:
        print(f"unused: {path} (no scenario of that name; not deleted)")
    counts: dict[str, int] = {}
    for result in report.results:
        # A snapshot that matches while the reference or a rule fails is still a failure.
        verdict = "failed" if result.fails and not result.verdict.fails else result.verdict.name
        counts[verdict.lower()] = counts.get(verdict.lower(), 0) + 1
    tally = ", ".join(f"{count} {verdict}" for verdict, count in counts.items())
    total = len(report.results)
    print(f"{total} scenario{'s' if total != 1 else ''} in {seconds:.1f} s: {tally}")


def _json_report(report: gate.GateReport, seconds: float) -> dict[str, object]:
    return {
        "ok": not report.failed,
        "seconds": round(seconds, 3),
        "scenarios": [
            {
                "scenario": result.scenario,
                "result": result.verdict.name.lower(),
                "snapshot": str(result.snapshot),
                "calls": result.calls,
                "host_cpuid_differs": result.host_differs,
                "seconds": round(result.seconds, 3),
                "differences": [
                    _json_difference(difference)
                    for difference in (result.comparison.differences if result.comparison else [])
                ],
                "conformance": None
                if result.conformance is None
                else {
                    "reference": str(result.conformance.reference.path),
                    "ok": result.conformance.ok,
                    "deviates_on_purpose": result.deviates_on_purpose,
                    "deviations_not_allowed": len(result.conformance.failures),
                    "deviations_allowed": len(result.conformance.deviations)
                    - len(result.conformance.failures),
                },
                "lint": [
                    {
                        "rule": finding.rule_id,
                        "severity": finding.severity.value,
                        "thread": finding.thread,
                        "index": finding.index,
                        "request": finding.request,
                        "message": finding.message,
                    }
                    for finding in result.findings
                ],
            }
            for result in report.results
        ],
        "unused": [str(path) for path in report.unused],
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
        "expected": _json_value(difference.expected),
        "actual": _json_value(difference.actual),
    }


def _json_value(value: Compared) -> Value | None:
    return None if value is ABSENT or not isinstance(value, int | str | list | dict) else value
