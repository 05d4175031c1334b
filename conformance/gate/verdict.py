"""The gate behind `kvm-conformance check`: trace scenarios, then judge each trace three ways.

1. Regression: the document equals `<expected>/<name>.yaml` (or, when updating, is written there);
   on a host whose KVM reports other CPUID than the snapshot's did, the inputs that follow that
   CPUID are left out (compare/host_answers.py), and the result says so.
2. Conformance: a scenario with a QEMU reference (its record's `reference`) fits inside it, as
   the allowances beside the reference permit; a scenario that deviates on purpose shows its
   deviations without failing on them.
3. Lint: no KVM usage rule finds an error in it.

The verdict is assembled here and only here (`ScenarioResult.fails`, `.tally`); the command
renders it. Every snapshot is read before the first scenario is traced, so a malformed file or
a missing directory is reported in a second, not after a minute of tracing.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from conformance.compare.conformance import ConformanceResult
from conformance.compare.host_answers import HOST_DERIVED_INPUTS, same_host_cpuid
from conformance.compare.regression import CompareOptions, Comparison, compare_documents
from conformance.gate.references import judge_against_reference
from conformance.gate.resources import kvm_missing, ptrace_missing
from conformance.gate.scenarios import trace_scenario
from conformance.lint import Finding, LintConfig, has_errors, lint
from conformance.model.document import TraceDocument
from conformance.model.errors import ConformanceError, KvmUnavailableError
from conformance.model.scenarios import SCENARIOS, Scenario
from conformance.normalize.capture import Capture
from conformance.snapshot.store import SnapshotStore


class SnapshotOutcome(enum.Enum):
    """The regression judgment: how the trace stands against its snapshot."""

    PASSED = "pass"
    FAILED = "FAIL"  # differs from the snapshot
    MISSING = "missing"  # no snapshot to compare with (and not updating)
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"

    @property
    def fails(self) -> bool:
        return self in (SnapshotOutcome.FAILED, SnapshotOutcome.MISSING)


class ConformanceOutcome(enum.Enum):
    """The conformance judgment against the scenario's QEMU reference."""

    OK = "ok"
    FAILED = "FAIL"
    DEVIATES_ON_PURPOSE = "deviates on purpose"  # deviations shown, not failed on


@dataclass(frozen=True, slots=True)
class ScenarioResult:
    scenario: Scenario
    snapshot_outcome: SnapshotOutcome
    snapshot: Path
    calls: int  # calls in the new trace, each KVM_RUN exit counted
    seconds: float  # tracing and normalizing
    comparison: Comparison | None = None  # set when compared (pass or FAIL)
    conformance: ConformanceResult | None = None  # set when the scenario has a QEMU reference
    findings: tuple[Finding, ...] = ()
    # The snapshot's host reported other supported CPUID: the inputs that follow it were not
    # compared (host_answers.HOST_DERIVED_INPUTS).
    host_differs: bool = False

    @property
    def conformance_outcome(self) -> ConformanceOutcome | None:
        if self.conformance is None:
            return None
        if self.conformance.ok:
            return ConformanceOutcome.OK
        if self.scenario.deviates_on_purpose is not None:
            return ConformanceOutcome.DEVIATES_ON_PURPOSE
        return ConformanceOutcome.FAILED

    @property
    def lint_fails(self) -> bool:
        return has_errors(self.findings)

    @property
    def fails(self) -> bool:
        """The snapshot differs or is missing, QEMU's reference is not met, or a rule errs."""
        return (
            self.snapshot_outcome.fails
            or self.conformance_outcome is ConformanceOutcome.FAILED
            or self.lint_fails
        )

    @property
    def tally(self) -> str:
        """The bucket the summary counts it in: its snapshot outcome, or "failed" whenever any
        judgment fails (a snapshot that matches beside a failed reference is a failure)."""
        if self.fails and not self.snapshot_outcome.fails:
            return "failed"
        return self.snapshot_outcome.name.lower()


@dataclass(slots=True)
class GateReport:
    results: list[ScenarioResult] = field(default_factory=list)
    # Snapshots no scenario asked for (a renamed or removed scenario); only known when every
    # scenario ran, and never deleted: that is for a person to decide.
    unused: list[Path] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(result.fails for result in self.results)


class ExpectedDirectoryError(ConformanceError):
    """The snapshot directory to compare against does not exist."""


def require_tracing_environment() -> None:
    """KvmUnavailableError naming what is missing, before any work starts."""
    for missing in (kvm_missing, ptrace_missing):
        reason = missing()
        if reason is not None:
            raise KvmUnavailableError(reason)


def run_gate(
    scenarios: Sequence[Scenario],
    store: SnapshotStore,
    *,
    references: Path,
    lint_config: LintConfig,
    on_start: Callable[[int, str], None] = lambda index, scenario: None,
    on_result: Callable[[ScenarioResult], None] = lambda result: None,
) -> GateReport:
    """Trace each scenario and compare it with its snapshot (or store it, if `store.update`),
    with the QEMU reference in `references` it is held against, and lint it.

    `on_start(index, scenario name)` before each trace (0-based index) and `on_result` after it
    are for progress.
    """
    if not store.update and not store.directory.is_dir():
        raise ExpectedDirectoryError(
            f"{store.directory}: no such directory of expected traces; run from the repository "
            "root, pass --expected DIR, or create it with --update"
        )
    expected = {} if store.update else {s.name: store.load(s.name) for s in scenarios}
    report = GateReport()
    for index, scenario in enumerate(scenarios):
        on_start(index, scenario.name)
        traced = trace_scenario(scenario.name)
        result = dataclasses.replace(
            _judge(scenario, traced, store, expected.get(scenario.name)),
            conformance=judge_against_reference(scenario, traced.document, references),
            findings=tuple(lint(traced.document, lint_config)),
        )
        report.results.append(result)
        on_result(result)
    if {scenario.name for scenario in scenarios} == set(SCENARIOS):
        report.unused = [store.path_for(name) for name in store.report().unused]
    return report


def _judge(
    scenario: Scenario, traced: Capture, store: SnapshotStore, expected: TraceDocument | None
) -> ScenarioResult:
    path = store.path_for(scenario.name)
    judged = ScenarioResult(
        scenario=scenario,
        snapshot_outcome=SnapshotOutcome.MISSING,
        snapshot=path,
        calls=traced.document.call_count(),
        seconds=traced.seconds,
    )
    if store.update:
        outcome = SnapshotOutcome(store.save(scenario.name, traced.document))
        return dataclasses.replace(judged, snapshot_outcome=outcome)
    if expected is None:
        return judged
    host_differs = not same_host_cpuid(expected, traced.document)
    options = CompareOptions(ignore=HOST_DERIVED_INPUTS) if host_differs else None
    comparison = compare_documents(
        expected, traced.document, scenario=scenario.name, options=options
    )
    return dataclasses.replace(
        judged,
        snapshot_outcome=SnapshotOutcome.PASSED if comparison.ok else SnapshotOutcome.FAILED,
        comparison=comparison,
        host_differs=host_differs,
    )
