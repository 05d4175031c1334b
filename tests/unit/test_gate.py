"""A scenario fails the gate on any of its three judgements, not only on its snapshot."""

from __future__ import annotations

from pathlib import Path

from conformance.gate.verdict import GateReport, ScenarioResult, Verdict
from conformance.lint import Finding, Severity


def _finding(severity: Severity) -> Finding:
    return Finding("KVMC006", severity, "vcpu0", 7, "KVM_RUN", "ran after a refused call")


def _result(*findings: Finding, scenario: str = "hello") -> ScenarioResult:
    return ScenarioResult(
        scenario, Verdict.PASSED, Path("expected/hello.yaml"), 70, 0.3, findings=findings
    )


def test_a_lint_error_fails_a_scenario_whose_snapshot_matches() -> None:
    report = GateReport([_result(_finding(Severity.ERROR))])
    assert report.results[0].fails
    assert report.failed


def test_lint_warnings_alone_do_not_fail() -> None:
    report = GateReport([_result(_finding(Severity.WARNING))])
    assert not report.failed


def test_a_scenario_that_deviates_on_purpose_is_marked() -> None:
    assert _result(scenario="memory-setup").deviates_on_purpose
    assert not _result(scenario="tiny-bios").deviates_on_purpose
