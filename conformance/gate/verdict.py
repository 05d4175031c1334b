"""The gate behind `kvm-conformance check`: trace scenarios, then judge each trace three ways.

1. Regression: the document equals `<expected>/<name>.yaml` (or, when updating, is written there)
   in the VMM's decisions: a snapshot recorded on another host compares the same, its host
   answers named as such (compare/host_differences.py), and the result names the host's
   differences.
2. Conformance: a scenario with a QEMU reference (its record's `reference`) fits inside it, as
   the allowances beside the reference permit; a scenario that deviates on purpose shows its
   deviations without failing on them.
3. Lint: no KVM usage rule finds an error in it.

A scenario whose VMM did not run to its end (another exit status than its record's, its
timeout, a signal) is judged on that alone: its trace is neither compared nor stored.

The verdict is assembled here and only here (`ScenarioResult.fails`, `.tally`); the command
renders it. Every snapshot is read before the first scenario is traced, so a malformed file is
reported in a second, not after a minute of tracing; and nothing is written until the last
scenario has been judged (`SnapshotStore.commit`), so an interrupted gate changes no file.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from conformance.compare.conformance import ConformanceResult
from conformance.compare.host_differences import HostContext
from conformance.compare.regression import Comparison, compare_documents
from conformance.gate.host_variants import snapshot_for, stage_update, stored_variants
from conformance.gate.references import judge_against_reference
from conformance.gate.resources import kvm_missing, ptrace_missing
from conformance.gate.scenarios import SCENARIO_TOOLS, ScenarioRunError, trace_scenario
from conformance.lint import Finding, LintConfig, has_errors, lint
from conformance.model.document import TraceDocument
from conformance.model.errors import KvmUnavailableError
from conformance.model.scenarios import Scenario
from conformance.normalize.capture import Capture
from conformance.snapshot.format import SnapshotError
from conformance.snapshot.store import SnapshotStore, dump_document

# `check --qemu live`'s judge (gate/live_references.py): a scenario's trace against QEMU's
# reference recorded on this host, None when the scenario has no shipped reference.
LiveJudge = Callable[[Scenario, TraceDocument, Path | None], ConformanceResult | None]


class SnapshotOutcome(enum.Enum):
    """The regression judgment: how the trace stands against its snapshot."""

    PASSED = "pass"
    FAILED = "FAIL"  # differs from the snapshot
    MISSING = "missing"  # no snapshot to compare with (and not updating)
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    RUN_FAILED = "error"  # the VMM did not run to its end: nothing compared, nothing stored

    @property
    def fails(self) -> bool:
        return self in (SnapshotOutcome.FAILED, SnapshotOutcome.MISSING, SnapshotOutcome.RUN_FAILED)


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
    # `check --qemu live`: against QEMU's reference recorded on this host at check time.
    live_conformance: ConformanceResult | None = None
    findings: tuple[Finding, ...] = ()
    lint_config: LintConfig = field(default_factory=LintConfig)  # the settings it was linted with
    run_failure: str | None = None  # why the VMM did not run to its end (RUN_FAILED)
    pending: Path | None = None  # the NAME.yaml.new written for review

    @property
    def conformance_outcome(self) -> ConformanceOutcome | None:
        return self._outcome(self.conformance)

    @property
    def live_outcome(self) -> ConformanceOutcome | None:
        return self._outcome(self.live_conformance)

    def _outcome(self, result: ConformanceResult | None) -> ConformanceOutcome | None:
        if result is None:
            return None
        if result.ok:
            return ConformanceOutcome.OK
        if self.scenario.deviates_on_purpose is not None:
            return ConformanceOutcome.DEVIATES_ON_PURPOSE
        return ConformanceOutcome.FAILED

    @property
    def snapshot_hosts(self) -> HostContext | None:
        """The snapshot's host and this one, when they differ."""
        hosts = self.comparison.hosts if self.comparison is not None else None
        return hosts if hosts is not None and hosts.differ else None

    @property
    def reference_hosts(self) -> HostContext | None:
        """The QEMU reference's host and this one, when they differ."""
        hosts = self.conformance.hosts if self.conformance is not None else None
        return hosts if hosts is not None and hosts.differ else None

    @property
    def lint_fails(self) -> bool:
        return has_errors(self.findings)

    @property
    def fails(self) -> bool:
        """The snapshot differs or is missing, QEMU's reference is not met, or a rule errs."""
        return (
            self.snapshot_outcome.fails
            or self.conformance_outcome is ConformanceOutcome.FAILED
            or self.live_outcome is ConformanceOutcome.FAILED
            or self.lint_fails
        )

    @property
    def tally(self) -> str:
        """The bucket the summary counts it in: its snapshot outcome, or "failed" whenever any
        judgment fails (a snapshot that matches beside a failed reference is a failure)."""
        if self.fails and not self.snapshot_outcome.fails:
            return "failed"
        if self.snapshot_outcome is SnapshotOutcome.RUN_FAILED:
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
    lint_for: Callable[[Scenario], LintConfig],
    references: Path | None = None,
    live: LiveJudge | None = None,
    pending: bool = False,
    every_scenario: bool = False,
    on_start: Callable[[int, str], None] = lambda index, scenario: None,
    on_result: Callable[[ScenarioResult], None] = lambda result: None,
) -> GateReport:
    """Trace each scenario and compare it with its snapshot (or stage it, if `store.update`),
    hold it against its QEMU reference (a shipped one is looked up in `references`, when
    given; with `live`, also against QEMU's recorded on this host now), and lint it with
    `lint_for(scenario)`. `pending`: a missing or differing snapshot
    is written beside it as NAME.yaml.new. `every_scenario`: these are all of the project's
    scenarios, so snapshots none of them asked for are reported as unused.

    What the run writes is written when the last scenario has been judged. `on_start(index,
    scenario name)` before each trace (0-based index) and `on_result` after it are for progress.
    """
    # Read when updating too: where an update goes depends on the host the snapshot is from.
    expected = {s.name: _load(store, s.name) for s in scenarios}
    variants = {s.name: stored_variants(store, s.name) for s in scenarios}
    report = GateReport()
    for index, scenario in enumerate(scenarios):
        on_start(index, scenario.name)
        try:
            traced = trace_scenario(scenario)
        except ScenarioRunError as error:
            result = _not_run(scenario, store, str(error))
        else:
            settings = lint_for(scenario)
            result = dataclasses.replace(
                _judge(
                    scenario,
                    traced,
                    store,
                    expected.get(scenario.name),
                    variants.get(scenario.name, {}),
                    pending=pending,
                ),
                conformance=judge_against_reference(scenario, traced.document, references),
                live_conformance=None
                if live is None
                else live(scenario, traced.document, references),
                findings=tuple(lint(traced.document, settings)),
                lint_config=settings,
            )
        report.results.append(result)
        on_result(result)
    if every_scenario:
        # Only snapshots of scenarios: the pytest plugin's, in the same directory, are its own.
        ours = set(store.written_by(SCENARIO_TOOLS))
        report.unused = [store.path_for(name) for name in store.report().unused if name in ours]
    store.commit()
    return report


def _not_run(scenario: Scenario, store: SnapshotStore, why: str) -> ScenarioResult:
    return ScenarioResult(
        scenario=scenario,
        snapshot_outcome=SnapshotOutcome.RUN_FAILED,
        snapshot=store.path_for(scenario.name),
        calls=0,
        seconds=0.0,
        run_failure=why,
    )


def _load(store: SnapshotStore, name: str) -> TraceDocument | None:
    """The snapshot; when updating, one that cannot be read is one to replace, not an error."""
    if not store.update:
        return store.load(name)
    try:
        return store.load(name)
    except SnapshotError:
        return None


def _judge(
    scenario: Scenario,
    traced: Capture,
    store: SnapshotStore,
    expected: TraceDocument | None,
    variants: dict[str, TraceDocument],
    *,
    pending: bool,
) -> ScenarioResult:
    document = traced.document
    judged = ScenarioResult(
        scenario=scenario,
        snapshot_outcome=SnapshotOutcome.MISSING,
        snapshot=store.path_for(scenario.name),
        calls=document.call_count(),
        seconds=traced.seconds,
    )
    if store.update:
        name, written = stage_update(store, scenario.name, expected, variants, document)
        return dataclasses.replace(
            judged, snapshot_outcome=SnapshotOutcome(written), snapshot=store.path_for(name)
        )
    snapshot = snapshot_for(scenario.name, expected, variants, document)
    judged = dataclasses.replace(judged, snapshot=store.path_for(snapshot.name))
    if snapshot.document is None:
        return _with_pending(judged, store, document, pending)
    comparison = compare_documents(snapshot.document, document, scenario=scenario.name)
    judged = dataclasses.replace(
        judged,
        snapshot_outcome=SnapshotOutcome.PASSED if comparison.ok else SnapshotOutcome.FAILED,
        comparison=comparison,
    )
    if comparison.ok:
        if pending:
            store.stage_pending_removal(scenario.name)
        return judged
    return _with_pending(judged, store, document, pending)


def _with_pending(
    judged: ScenarioResult, store: SnapshotStore, document: TraceDocument, pending: bool
) -> ScenarioResult:
    if not pending:
        return judged
    written = store.stage_pending(judged.scenario.name, dump_document(document))
    return dataclasses.replace(judged, pending=written)
