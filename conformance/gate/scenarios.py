"""Tracing a scenario, built-in or a project's, and refusing a run that did not finish.

`trace_scenario` runs the scenario's command under the tracer (the VMM core's program for a
built-in one, `python -m conformance run NAME`; the project's command line, in the project's
root, for the others) with the provenance `check` and the pytest plugin store in `source:`,
its exit status included. A trace is only worth comparing or storing when the VMM ran to its
end, so a run that did not is refused before anything reads it:

- interrupted (SIGINT or SIGTERM reached the tracer): `TraceInterrupted`, a KeyboardInterrupt,
  so that whoever asked stops as an interrupted program does (pytest: "Interrupted", status 2);
- stopped at its timeout, killed by a signal, ended with another exit status than its record
  says, or never opened /dev/kvm: `ScenarioRunError`, whose message says which.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

from conformance.model.document import Value
from conformance.model.errors import ConformanceError
from conformance.model.scenarios import Scenario
from conformance.normalize.capture import Capture, capture_output

SCENARIO_TOOL = "kvm-conformance vmm core"
PROJECT_SCENARIO_TOOL = "kvm-conformance scenario"
SCENARIO_TOOLS = frozenset({SCENARIO_TOOL, PROJECT_SCENARIO_TOOL})  # `check`'s snapshots
_STDERR_LINES_SHOWN = 5
_RETRY_SECONDS = 0.05
_TERMINATION = (signal.SIGINT, signal.SIGTERM)


class ScenarioRunError(ConformanceError):
    """The scenario's VMM did not run to its end under the tracer; its trace would be a
    truncated or failed run's."""

    exit_status = 1  # the gate's verdict on that scenario: it fails


class TraceInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM reached the tracer: the trace was cut short and nothing is kept."""

    def __init__(self, what: str, signum: int) -> None:
        self.signum = signum
        super().__init__(f"{what}: interrupted by {signal.Signals(signum).name}")


def trace_scenario(scenario: Scenario) -> Capture:
    """The scenario's VMM, traced to its end: the document its snapshot holds."""
    argv, cwd = scenario_command(scenario)
    source: dict[str, Value] = {"scenario": scenario.name}
    if scenario.command is None:
        source["tool"] = SCENARIO_TOOL
    else:
        source["tool"] = PROJECT_SCENARIO_TOOL
        source["argv"] = list(scenario.command.argv)
    if scenario.kvm_run != "full":
        source["kvm_run"] = scenario.kvm_run
    stdin = scenario.command.stdin if scenario.command is not None else b""
    with deadline(scenario.timeout) as limit:
        traced = capture_output(argv, source, kvm_run=scenario.kvm_run, input=stdin, cwd=cwd)
    return finished_run(f"scenario {scenario.name}", traced, scenario.exit_status, limit)


def finished_run(
    what: str, traced: Capture, exit_status: int, limit: Deadline | None = None
) -> Capture:
    """`traced`, with its exit status recorded in `source:`, if the run finished as expected;
    TraceInterrupted or ScenarioRunError (saying why, with the end of its stderr) if not."""
    outcome = traced.outcome
    if limit is not None and limit.expired:
        raise ScenarioRunError(
            f"{what}: still running after its timeout of {limit.seconds:g} s; stopped"
            f"{_stderr_tail(traced)}"
        )
    interrupted_by = outcome.result.interrupted_by
    if interrupted_by is None and limit is not None:
        interrupted_by = limit.interrupted_by
    if interrupted_by is not None:
        raise TraceInterrupted(what, interrupted_by)
    if outcome.result.exit_signal is not None:
        name = signal.Signals(outcome.result.exit_signal).name
        raise ScenarioRunError(f"{what}: the VMM was killed by {name}{_stderr_tail(traced)}")
    if outcome.message is not None:
        raise ScenarioRunError(f"{what}: {outcome.message}{_stderr_tail(traced)}")
    if outcome.exit_status != exit_status:
        raise ScenarioRunError(
            f"{what}: the VMM exited with status {outcome.exit_status}, expected "
            f"{exit_status}{_stderr_tail(traced)}"
        )
    traced.document.source["exit_status"] = outcome.exit_status
    return traced


def scenario_command(scenario: Scenario) -> tuple[list[str], str | None]:
    """The argv to trace and the directory to run it in (None: ours)."""
    if scenario.command is None:
        return [sys.executable, "-m", "conformance", "run", scenario.name], None
    program, *arguments = scenario.command.argv
    root = scenario.command.root
    # A path is the project's (relative to its root); a bare name is looked up in PATH.
    executable = str(root / program) if "/" in program else program
    return [executable, *arguments], str(root)


def _stderr_tail(traced: Capture) -> str:
    lines = traced.error_output.strip().splitlines()[-_STDERR_LINES_SHOWN:]
    if not lines:
        return ""
    return "; its stderr ends:\n" + "\n".join(f"  {line}" for line in lines)


@dataclass(slots=True)
class Deadline:
    """A traced run's bounds, and whether they ended it."""

    seconds: float
    expired: bool = False  # the deadline stopped the run
    interrupted_by: int | None = None  # SIGINT/SIGTERM that came while the tracer was not there


@contextmanager
def deadline(seconds: float) -> Iterator[Deadline]:
    """Bound a traced run: stop it after `seconds`, and keep every SIGINT and SIGTERM.

    The deadline is SIGALRM, then SIGTERM to ourselves, which the tracer answers as it answers
    any SIGTERM (its tracees end, the trace returns), and `expired` says it was the deadline.
    Around the tracer's own handlers, a SIGINT or SIGTERM is recorded rather than raised: one
    raised as KeyboardInterrupt while the tracer forks would land in an at-fork callback
    (logging's), where Python reports it as unraisable and the run goes on as if Ctrl-C had
    never been pressed. `finished_run` raises it once the trace is over. Signals need the main
    thread; elsewhere the run is neither bounded nor guarded.
    """
    limit = Deadline(seconds)
    if threading.current_thread() is not threading.main_thread():
        yield limit
        return

    def on_termination(signum: int, _frame: FrameType | None) -> None:
        if limit.interrupted_by is None:
            limit.interrupted_by = signum

    def on_alarm(_signum: int, _frame: FrameType | None) -> None:
        # Only while the tracer answers SIGTERM (its handler in place of ours): outside the
        # trace, the deadline must not pass for an interrupt.
        if signal.getsignal(signal.SIGTERM) is not on_termination:
            limit.expired = True
            signal.raise_signal(signal.SIGTERM)
        else:  # the tracer is not there yet (or any more): look again shortly
            signal.setitimer(signal.ITIMER_REAL, _RETRY_SECONDS)

    previous = {signum: signal.signal(signum, on_termination) for signum in _TERMINATION}
    previous_alarm = signal.signal(signal.SIGALRM, on_alarm)
    started = time.monotonic()
    previous_delay, previous_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield limit
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_alarm)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        # Someone else's alarm (pytest-timeout's, say) keeps running with the time it has left;
        # one already overdue fires right away rather than never (as vmm/machine.py does).
        if previous_delay or previous_interval:
            remaining = max(previous_delay - (time.monotonic() - started), 1e-6)
            signal.setitimer(signal.ITIMER_REAL, remaining, previous_interval)
