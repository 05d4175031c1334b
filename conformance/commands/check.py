"""`check`: the regression gate. Trace every scenario of the VMM core, compare with expected/.

    pass  memory-setup            8 calls   0.29 s
    FAIL  hello                  70 calls   0.32 s  1 difference
    ...
    6 scenarios in 11.4 s: 5 passed, 1 failed

Exit 0 when every trace equals its snapshot, 1 when one differs or has no snapshot, 2 for a
usage or environment error (cli.py). Results go to stdout as each scenario finishes; the
"[2/6] hello …" progress goes to stderr, and only to a terminal, so piped output stays clean.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TextIO

from conformance import gate
from conformance.compare import ABSENT, Compared, Difference
from conformance.document import Value
from conformance.report import render_comparison, use_color
from conformance.snapshot import SnapshotStore

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
    parser.set_defaults(command=_check)


def _check(args: argparse.Namespace) -> int:
    scenarios = gate.select_scenarios(args.scenario)
    gate.require_tracing_environment()
    store = SnapshotStore(args.expected, update=args.update)
    progress = _Progress(sys.stderr, len(scenarios))
    started = time.monotonic()
    text = args.format == "text"

    def on_result(result: gate.ScenarioResult) -> None:
        progress.clear()  # a result line must not land after the "…" of the progress line
        if text:
            _print_line(result)

    try:
        report = gate.run_gate(scenarios, store, on_start=progress.start, on_result=on_result)
    finally:
        progress.clear()
    seconds = time.monotonic() - started
    if text:
        _print_text_summary(report, seconds)
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


def _print_line(result: gate.ScenarioResult) -> None:
    differences = len(result.comparison.differences) if result.comparison is not None else 0
    note = ""
    if differences:
        note = f"  {differences} difference{'s' if differences > 1 else ''}"
    elif result.verdict is gate.Verdict.MISSING:
        note = f"  no {result.snapshot}; `kvm-conformance check --update` creates it"
    print(
        f"{result.verdict.value:<9} {result.scenario:<20} {result.calls:>7} calls "
        f"{result.seconds:>6.2f} s{note}",
        flush=True,  # each line as its scenario ends, also through a pipe (CI logs)
    )


def _print_text_summary(report: gate.GateReport, seconds: float) -> None:
    color = use_color(sys.stdout)
    for result in report.results:
        if result.comparison is not None and not result.comparison.ok:
            print()
            sys.stdout.write(render_comparison(result.comparison, color=color))
    for path in report.unused:
        print(f"unused: {path} (no scenario of that name; not deleted)")
    counts: dict[str, int] = {}
    for result in report.results:
        counts[result.verdict.name.lower()] = counts.get(result.verdict.name.lower(), 0) + 1
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
                "seconds": round(result.seconds, 3),
                "differences": [
                    _json_difference(difference)
                    for difference in (result.comparison.differences if result.comparison else [])
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
