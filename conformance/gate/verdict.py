"""The gate behind `kvm-conformance check`: trace scenarios, then judge each trace three ways.

1. Regression: the document equals `<expected>/<name>.yaml` (or, when updating, is written there);
   on a host whose KVM reports other CPUID than the snapshot's did, the inputs that follow that
   CPUID are left out (host_answers.py), and the result says so.
2. Conformance: a scenario mapped to a QEMU reference (`qemu_scenarios.REFERENCE_FOR_SCENARIO`)
   fits inside it, as the rules beside the reference allow.
3. Lint: no KVM usage rule finds an error in it.

Every snapshot is read before the first scenario is traced, so a malformed file or a missing
directory is reported in a second, not after a minute of tracing. Rendering is the command's
(`conformance.cli.check`); this module decides and measures.
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
from conformance.gate.references import check_against_reference
from conformance.gate.resources import kvm_missing, ptrace_missing
from conformance.lint import Finding, LintConfig, has_errors, lint
from conformance.model.document import TraceDocument
from conformance.model.errors import ConformanceError, KvmUnavailableError, UnknownScenarioError
from conformance.normalize.capture import TracedRun, trace_scenario
from conformance.qemu.scenarios import DEVIATES_ON_PURPOSE
from conformance.snapshot.store import SnapshotStore
from conformance.vmm.machine import SCENARIOS


class Verdict(enum.Enum):
    PASSED = "pass"
    FAILED = "FAIL"  # differs from the snapshot
    MISSING = "missing"  # no snapshot to compare with (and not updating)
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"

    @property
    def fails(self) -> bool:
        return self in (Verdict.FAILED, Verdict.MISSING)


@dataclass(frozen=True, slots=True)
class ScenarioResult:
    scenario: str
    verdict: Verdict
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
    def deviates_on_purpose(self) -> bool:
        return self.scenario in DEVIATES_ON_PURPOSE

    @property
    def conformance_fails(self) -> bool:
        """QEMU's reference is not met, and the scenario is not one that deviates on purpose."""
        return (
            self.conformance is not None
            and not self.conformance.ok
            and not self.deviates_on_purpose
        )

    @property
    def fails(self) -> bool:
        """The snapshot differs or is missing, QEMU's reference is not met, or a rule errs."""
        return self.verdict.fails or self.conformance_fails or has_errors(self.findings)


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


def select_scenarios(requested: Sequence[str]) -> list[str]:
    """The scenarios to run, in the order `kvm-conformance scenarios` lists them; all by default."""
    unknown = sorted(set(requested) - set(SCENARIOS))
    if unknown:
        raise UnknownScenarioError(
            f"no scenario named {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(sorted(SCENARIOS))})"
        )
    return [name for name in SCENARIOS if not requested or name in requested]


def require_tracing_environment() -> None:
    """KvmUnavailableError naming what is missing, before any work starts."""
    for missing in (kvm_missing, ptrace_missing):
        reason = missing()
        if reason is not None:
            raise KvmUnavailableError(reason)


def run_gate(
    scenarios: Sequence[str],
    store: SnapshotStore,
    *,
    references: Path,
    lint_config: LintConfig,
    on_start: Callable[[int, str], None] = lambda index, scenario: None,
    on_result: Callable[[ScenarioResult], None] = lambda result: None,
) -> GateReport:
    """Trace each scenario and compare it with its snapshot (or store it, if `store.update`),
    with the QEMU reference in `references` it is mapped to, and lint it.

    `on_start(index, scenario)` before each trace (0-based index) and `on_result` after it are
    for progress.
    """
    if not store.update and not store.directory.is_dir():
        raise ExpectedDirectoryError(
            f"{store.directory}: no such directory of expected traces; run from the repository "
            "root, pass --expected DIR, or create it with --update"
        )
    expected = {} if store.update else {name: store.load(name) for name in scenarios}
    report = GateReport()
    for index, scenario in enumerate(scenarios):
        on_start(index, scenario)
        traced = trace_scenario(scenario)
        result = dataclasses.replace(
            _judge(scenario, traced, store, expected.get(scenario)),
            conformance=check_against_reference(scenario, traced.document, references),
            findings=tuple(lint(traced.document, lint_config)),
        )
        report.results.append(result)
        on_result(result)
    if set(scenarios) == set(SCENARIOS):
        report.unused = [store.path_for(name) for name in store.report().unused]
    return report


def _judge(
    scenario: str, traced: TracedRun, store: SnapshotStore, expected: TraceDocument | None
) -> ScenarioResult:
    path = store.path_for(scenario)
    if store.update:
        outcome = Verdict(store.save(scenario, traced.document))
        return ScenarioResult(scenario, outcome, path, traced.calls, traced.seconds)
    if expected is None:
        return ScenarioResult(scenario, Verdict.MISSING, path, traced.calls, traced.seconds)
    host_differs = not same_host_cpuid(expected, traced.document)
    options = CompareOptions(ignore=HOST_DERIVED_INPUTS) if host_differs else None
    comparison = compare_documents(expected, traced.document, scenario=scenario, options=options)
    verdict = Verdict.PASSED if comparison.ok else Verdict.FAILED
    return ScenarioResult(
        scenario,
        verdict,
        path,
        traced.calls,
        traced.seconds,
        comparison,
        host_differs=host_differs,
    )
