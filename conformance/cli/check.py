"""`check`: the gate. Trace every scenario of the VMM core; compare each with expected/, with
the QEMU reference it is mapped to in traces/qemu/, and lint it.

    pass   memory-setup    8 calls  0.29 s  snapshot: equal  qemu memory-1g: ok  lint: ok
    FAIL   tiny-bios     111 calls  0.32 s  snapshot: equal  qemu tiny-bios: FAIL, 1 deviation  …
    ...
    6 scenarios in 11.4 s: 5 passed, 1 failed

The first word is the scenario's verdict; each judgment then says its own (gate/verdict.py
assembles them: this module only words them). Exit 0 when every scenario passes, 1 otherwise,
2 for a usage or environment error (cli/arguments.py). Results go to stdout as each scenario
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

from conformance.cli.arguments import (
    EXIT_FAILED,
    add_command,
    add_lint_config_option,
    lint_config,
)
from conformance.cli.check_output import (
    accept_command,
    failure_blocks,
    html_section,
    json_report,
    left_out,
    scenario_line,
)
from conformance.gate.references import REFERENCE_DIRECTORY
from conformance.gate.verdict import (
    GateReport,
    ScenarioResult,
    require_tracing_environment,
    run_gate,
)
from conformance.lint import LintConfig
from conformance.model.errors import ConformanceError
from conformance.model.scenarios import select_scenarios
from conformance.report.diff import use_color
from conformance.report.html import gate_page
from conformance.report.left_out import render_left_out
from conformance.snapshot.store import SnapshotStore

DEFAULT_EXPECTED = Path("expected")  # relative to the working directory: the repository root


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        commands,
        "check",
        summary="the gate: trace every scenario and judge it three ways (snapshot, QEMU, lint)",
        description="Trace every scenario of the VMM core and judge each trace three ways: "
        "it must equal its snapshot in expected/ (regression), fit inside the QEMU reference "
        "in traces/qemu/ it is held against, as the allowances beside that reference permit "
        "(conformance), and raise no error from the KVM usage rules (lint). One line per "
        "scenario, then a block for each failed judgment, then a summary. Nothing under "
        "expected/ is written without --update.",
        examples=[
            "kvm-conformance check",
            "kvm-conformance check --scenario hello --format json",
            "kvm-conformance check --html report.html",
            "kvm-conformance check --update            # after an intended change",
        ],
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
    parser.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="text: lines for people (default); json: one document for machines",
    )
    parser.add_argument(
        "--html", type=Path, metavar="FILE", help="also write a self-contained HTML report"
    )
    parser.add_argument(
        "-v",
        "--full",
        action="store_true",
        help="every difference and deviation on its own line, calls whole, no line cut",
    )
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
    parser.add_argument(
        "--not-decisions",
        action="store_true",
        help="also say, per scenario, how many differences were left out as not VMM decisions "
        "(clocks, padding, fields the kernel ignores) and why",
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
            print(scenario_line(result), flush=True)  # as it ends, also through a pipe

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
        _print_text_summary(report, seconds, config, args)
    else:
        json.dump(json_report(report, seconds), sys.stdout, indent=2)
        sys.stdout.write("\n")
    if args.html is not None:
        page = gate_page(
            [html_section(result) for result in report.results], "kvm-conformance check"
        )
        try:
            args.html.write_text(page, encoding="utf-8")
        except OSError as error:
            raise ConformanceError(f"cannot write {args.html}: {error.strerror}") from None
    return EXIT_FAILED if report.failed else 0


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


def _print_text_summary(
    report: GateReport, seconds: float, config: LintConfig, args: argparse.Namespace
) -> None:
    color = use_color(sys.stdout)
    for result in report.results:
        if args.not_decisions:
            print(f"\n{result.scenario.name}:")
            print("\n".join(f"  {line}" for line in render_left_out(left_out(result))))
        accept = accept_command(result.scenario.name, args.expected, DEFAULT_EXPECTED)
        for block in failure_blocks(result, config, accept=accept, color=color, full=args.full):
            print()
            sys.stdout.write(block)
    for path in report.unused:
        print(f"unused: {path} (no scenario of that name; not deleted)")
    counts: dict[str, int] = {}
    for result in report.results:
        counts[result.tally] = counts.get(result.tally, 0) + 1
    tally = ", ".join(f"{count} {verdict}" for verdict, count in counts.items())
    total = len(report.results)
    print(f"{total} scenario{'s' if total != 1 else ''} in {seconds:.1f} s: {tally}")
