"""`check`: the gate. Trace every scenario of the project (those its configuration names; in
kvm-conformance's own repository, the VMM core's), compare each with its snapshot, hold it
against the QEMU reference it names, and lint it.

    pass   memory-setup    8 calls  0.29 s  snapshot: equal  qemu memory-1g: ok  lint: ok
    FAIL   tiny-bios     111 calls  0.32 s  snapshot: equal  qemu tiny-bios: FAIL, 1 deviation  …
    ...
    6 scenarios in 11.4 s: 5 passed, 1 failed

The first word is the scenario's verdict; each judgment then says its own (gate/verdict.py
assembles them: this module only words them). Exit 0 when every scenario passes, 1 otherwise (a
scenario whose VMM did not run to its end included), 2 for a usage, configuration or environment
error (cli/arguments.py), 128 + the signal when interrupted (nothing is written then). Results go
to stdout as each scenario finishes; the "[2/6] hello …" progress goes to stderr, and only to a
terminal, so piped output stays clean.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import TextIO

from conformance.cli.arguments import EXIT_FAILED, add_command
from conformance.cli.check_output import (
    accept_command,
    failure_blocks,
    host_blocks,
    html_section,
    json_report,
    left_out,
    scenario_line,
)
from conformance.cli.configuration import add_config_option, project
from conformance.gate.live_references import LiveReferences
from conformance.gate.project import Project
from conformance.gate.scenarios import TraceInterrupted
from conformance.gate.verdict import (
    GateReport,
    ScenarioResult,
    require_tracing_environment,
    run_gate,
)
from conformance.model.errors import ConformanceError
from conformance.model.scenarios import SCENARIOS, Scenario, select_scenarios
from conformance.report.diff import use_color
from conformance.report.html import gate_page
from conformance.report.left_out import render_left_out
from conformance.snapshot.store import SnapshotStore, running_on_ci


class ExpectedDirectoryError(ConformanceError):
    """The snapshot directory named to compare against does not exist."""


class NoScenariosError(ConformanceError):
    """The project configures no scenario to check."""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        commands,
        "check",
        summary="the gate: trace every scenario and judge it three ways (snapshot, QEMU, lint)",
        description="Trace every scenario of the project (its configuration's "
        "[tool.kvm-conformance.scenarios.NAME] tables; in kvm-conformance's own repository the "
        "VMM core's) and judge each trace three ways: it must equal its snapshot (regression), "
        "fit inside the QEMU reference it is held against, as the allowances beside that "
        "reference permit (conformance), and raise no error from the KVM usage rules (lint). A "
        "scenario whose VMM does not run to its end (another exit status, its timeout, a "
        "signal) fails, and its trace is neither compared nor written. One line per scenario, "
        "then a block for each failed judgment, then a summary. Nothing is written without "
        "--update or --pending, and nothing before every scenario has run.",
        examples=[
            "kvm-conformance check",
            "kvm-conformance check --scenario boot --format json",
            "kvm-conformance check --html report.html",
            "kvm-conformance check --update            # after an intended change",
            "kvm-conformance check --pending           # NAME.yaml.new for: kvm-conformance review",
            "kvm-conformance init -- ./my-vmm guest.bin   # a project's first scenario",
        ],
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
    parser.add_argument(
        "--qemu",
        choices=("shipped", "live"),
        default="shipped",
        help="shipped: hold scenarios against the QEMU references that ship (default); live: "
        "also record QEMU's reference on this host now and hold them against it too",
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
    parser.add_argument(
        "--not-decisions",
        action="store_true",
        help="also say, per scenario, how many differences were left out as not VMM decisions "
        "(clocks, padding, fields the kernel ignores) and why",
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
    live = LiveReferences().judge if args.qemu == "live" else None
    store = SnapshotStore(directory, update=update)
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
            lint_for=chosen.lint_for,
            references=args.references,
            live=live,
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
        _print_text_summary(report, seconds, args, chosen.snapshots)
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
    """A trace cut short says which scenario; a Ctrl-C between two traces is SIGINT's."""
    signum = interrupt.signum if isinstance(interrupt, TraceInterrupted) else signal.SIGINT
    what = str(interrupt) if isinstance(interrupt, TraceInterrupted) else "interrupted by SIGINT"
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


def _print_text_summary(
    report: GateReport, seconds: float, args: argparse.Namespace, default_snapshots: Path
) -> None:
    color = use_color(sys.stdout)
    for block in host_blocks(report):
        print()
        sys.stdout.write(block)
    for result in report.results:
        if result.run_failure is not None:
            print()
            print(result.run_failure)
        if args.not_decisions:
            print(f"\n{result.scenario.name}:")
            print("\n".join(f"  {line}" for line in render_left_out(left_out(result))))
        expected = args.expected or default_snapshots
        accept = accept_command(result.scenario.name, expected, default_snapshots)
        blocks = failure_blocks(
            result, result.lint_config, accept=accept, color=color, full=args.full
        )
        for block in blocks:
            print()
            sys.stdout.write(block)
    for path in report.unused:
        print(f"unused: {path} (no scenario of that name; not deleted)")
    counts: dict[str, int] = {}
    for result in report.results:
        counts[result.tally] = counts.get(result.tally, 0) + 1
    pending = [result.pending for result in report.results if result.pending is not None]
    if pending:
        print(f"{len(pending)} pending snapshot(s) written; `kvm-conformance review` shows each")
    tally = ", ".join(f"{count} {verdict}" for verdict, count in counts.items())
    total = len(report.results)
    print(f"{total} scenario{'s' if total != 1 else ''} in {seconds:.1f} s: {tally}")
