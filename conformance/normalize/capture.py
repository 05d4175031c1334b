"""Trace a command, or one of the VMM core's scenarios, into a normalized trace document.

This is where the tracer and normalization meet: `trace_command` runs any argv under ptrace with
the Normalizer as the event sink; `trace_scenario` runs `python -m conformance run SCENARIO` that
way, with the provenance `check` and the pytest plugin store in `source:`.

The tracer and the traced program share one CPU (`trace(pin=True)`): the fast placement, about
13 µs per stop against 40-60 µs across two. It also keeps a VMM deterministic that passes
KVM_GET_SUPPORTED_CPUID's entries to KVM_SET_CPUID2 unchanged: those carry the APIC ID of the
CPU that answered (CPUID 1 EBX[31:24], CPUID 0xB EDX). The VMM core writes its vCPU's own.
"""

from __future__ import annotations

import functools
import os
import platform
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from conformance.model.document import Entry, TraceDocument, Value
from conformance.model.errors import ConformanceError, UnknownScenarioError
from conformance.normalize.normalizer import Normalizer
from conformance.tracer import TraceOutcome, trace
from conformance.tracer.kvm_calls import KvmRunMode
from conformance.vmm.kvm import Kvm
from conformance.vmm.machine import SCENARIOS

SCENARIO_TOOL = "kvm-conformance vmm core"
# exits-100k exists to time 100,000 exits; stopping at each one under ptrace takes about 10 s,
# which is the scenario's own wall-clock limit, so its trace would end wherever the limit cut it.
# Its KVM_RUNs run unstopped and unrecorded; every other call of it is traced.
_KVM_RUN_MODES: dict[str, KvmRunMode] = {"exits-100k": "off"}
_FAILED_RUN_STATUSES = (2, 3)  # `kvm-conformance run`: usage/environment error, guest fault


class ScenarioRunError(ConformanceError):
    """The VMM core did not finish a scenario under the tracer; its trace would be truncated."""


@dataclass(frozen=True, slots=True)
class TracedRun:
    """A traced program's normalized trace, how it ended, and how long tracing took."""

    document: TraceDocument
    outcome: TraceOutcome
    seconds: float
    error_output: str  # what the program wrote to stderr

    @property
    def calls(self) -> int:
        """Calls in the trace, a run-length-encoded KVM_RUN counted once per exit."""
        return sum(call.repeat for calls in self.document.threads.values() for call in calls)


def trace_command(
    argv: Sequence[str],
    source: Mapping[str, Value],
    *,
    kvm_run: KvmRunMode = "full",
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> TracedRun:
    """Run `argv` to its end under the tracer, tracer and program on one CPU.

    The program's stdout goes to /dev/null: it is not part of a trace, and letting it through
    would interleave a guest's serial text with a report written to the same terminal or pipe.
    Its stderr goes to a file rather than a pipe, which nobody would drain while the tracer runs.
    """
    normalizer = Normalizer({**source, "host": host_facts()})
    started = time.monotonic()
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        with tempfile.TemporaryFile() as errors:
            outcome = trace(
                argv,
                normalizer.add,
                kvm_run=kvm_run,
                # One CPU for tracer and program: a ptrace stop costs ~4x less than across two.
                pin=True,
                stdin=devnull,
                stdout=devnull,
                stderr=errors.fileno(),
                env=env,
                cwd=cwd,
            )
            errors.seek(0)
            error_output = errors.read().decode("utf-8", errors="replace")
    finally:
        os.close(devnull)
    seconds = time.monotonic() - started
    return TracedRun(normalizer.finish(), outcome, seconds, error_output)


def trace_scenario(scenario: str) -> TracedRun:
    """Our VMM core running `scenario`, traced: the document `expected/<scenario>.yaml` holds.

    ScenarioRunError when the run failed (guest fault, run limit): a truncated trace must
    neither pass as a difference to explain nor be stored as the expected one.
    """
    if scenario not in SCENARIOS:
        raise UnknownScenarioError(
            f"no scenario named {scenario!r} (known: {', '.join(sorted(SCENARIOS))})"
        )
    kvm_run = _KVM_RUN_MODES.get(scenario, "full")
    source: dict[str, Value] = {"tool": SCENARIO_TOOL, "scenario": scenario}
    if kvm_run != "full":
        source["kvm_run"] = kvm_run
    traced = trace_command(scenario_argv(scenario), source, kvm_run=kvm_run)
    error_output = traced.error_output.strip()
    if traced.outcome.exit_status in _FAILED_RUN_STATUSES and error_output:
        last_line = error_output.splitlines()[-1]
        raise ScenarioRunError(
            f"scenario {scenario} failed under the tracer "
            f"(status {traced.outcome.exit_status}): {last_line}"
        )
    return traced


def scenario_argv(scenario: str) -> list[str]:
    return [sys.executable, "-m", "conformance", "run", scenario]


@functools.cache
def host_facts() -> Entry:
    """Provenance for `source: host:` — facts that explain why a trace differs on another host.

    The CPU model is there because SET_CPUID2's entries come from the host's supported CPUID.
    """
    facts: Entry = {"kernel": platform.release()}
    with Kvm() as kvm:
        facts["kvm_api"] = kvm.api_version()
    model = _cpu_model()
    if model is not None:
        facts["cpu"] = model
    return facts


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip()
    except OSError:
        return None  # no /proc: the provenance just says less
    return None
