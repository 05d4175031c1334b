"""A scenario fails the gate on any of its three judgements, not only on its snapshot."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from conformance.compare.allowances import Allowances, DeviationKind
from conformance.compare.conformance import ConformanceResult, Deviation
from conformance.gate.verdict import ConformanceOutcome, GateReport, ScenarioResult, SnapshotOutcome
from conformance.lint import Finding, Severity
from conformance.model.document import TraceDocument
from conformance.model.scenarios import SCENARIOS


def _finding(severity: Severity) -> Finding:
    return Finding("KVMC006", severity, "vcpu0", 7, "KVM_RUN", "ran after a refused call")


def _result(*findings: Finding, scenario: str = "hello") -> ScenarioResult:
    return ScenarioResult(
        scenario=SCENARIOS[scenario],
        snapshot_outcome=SnapshotOutcome.PASSED,
        snapshot=Path("expected/hello.yaml"),
        calls=70,
        seconds=0.3,
        findings=findings,
    )


def test_a_lint_error_fails_a_scenario_whose_snapshot_matches() -> None:
    report = GateReport([_result(_finding(Severity.ERROR))])
    assert report.results[0].fails
    assert report.failed


def test_lint_warnings_alone_do_not_fail() -> None:
    report = GateReport([_result(_finding(Severity.WARNING))])
    assert not report.failed


def test_a_scenario_that_deviates_on_purpose_is_marked() -> None:
    failed = ConformanceResult(TraceDocument({}, {}), TraceDocument({}, {}), Allowances())
    failed.deviations.append(
        Deviation(kind=DeviationKind.EXTRA, thread="main", call="KVM_RUN", subject_index=0)
    )
    on_purpose = dataclasses.replace(_result(scenario="memory-setup"), conformance=failed)
    assert on_purpose.conformance_outcome is ConformanceOutcome.DEVIATES_ON_PURPOSE
    assert not on_purpose.fails
    not_on_purpose = dataclasses.replace(_result(scenario="tiny-bios"), conformance=failed)
    assert not_on_purpose.conformance_outcome is ConformanceOutcome.FAILED
    assert not_on_purpose.fails and not_on_purpose.tally == "failed"
