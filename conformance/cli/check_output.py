"""How `check` words its verdicts: the judgments of a scenario line, the failure blocks, the
JSON report and the HTML page's sections, all from gate/verdict.py's ScenarioResult (the
verdict is assembled there; here it is only put into words)."""

from __future__ import annotations

from pathlib import Path

from conformance.compare.decisions import LeftOut
from conformance.compare.regression import Difference
from conformance.gate.verdict import (
    ConformanceOutcome,
    GateReport,
    ScenarioResult,
    SnapshotOutcome,
)
from conformance.lint import LintConfig, Severity
from conformance.lint.output import finding_record, render_text
from conformance.report.deviations import render_conformance
from conformance.report.diff import comparison_facts, render_comparison
from conformance.report.host import explained_lines, host_lines, render_host_lines
from conformance.report.html import Judgment, ScenarioSection
from conformance.report.values import json_value

HOST_DIFFERS = "recorded on another host: see the host block"


def verdict(result: ScenarioResult) -> str:
    """The scenario's one verdict: FAIL when any judgment fails, else how its snapshot stands."""
    if result.fails:
        return "FAIL"
    return "pass" if result.tally == "passed" else result.tally


def judgments(result: ScenarioResult) -> list[Judgment]:
    """Each judgment with its own verdict: snapshot, the QEMU reference (if any), lint."""
    found = [Judgment("snapshot", _snapshot(result), result.snapshot_outcome.fails)]
    for conformance, outcome in (
        (result.conformance, result.conformance_outcome),
        (result.live_conformance, result.live_outcome),
    ):
        if conformance is None or outcome is None:
            continue
        path = conformance.reference.path
        name = path.name.removesuffix(".yaml") if path else "reference"
        if outcome is ConformanceOutcome.FAILED:
            count = len(conformance.failures)
            said = f"FAIL, {count} deviation{'s' * (count != 1)}"
        else:
            said = outcome.value
        failed = outcome is ConformanceOutcome.FAILED
        found.append(Judgment(f"qemu {name}", said, failed, kind="qemu"))
    found.append(Judgment("lint", _lint(result), result.lint_fails))
    return found


def _snapshot(result: ScenarioResult) -> str:
    outcome = result.snapshot_outcome
    if outcome is SnapshotOutcome.PASSED:
        said = "equal"
    elif outcome is SnapshotOutcome.FAILED and result.comparison is not None:
        count = len(comparison_facts(result.comparison))
        said = f"FAIL, {count} difference{'s' * (count != 1)}"
    elif outcome is SnapshotOutcome.MISSING:
        said = f"missing ({result.snapshot}; `kvm-conformance check --update` creates it)"
    elif outcome is SnapshotOutcome.RUN_FAILED:
        said = "not compared, not written: the VMM did not run to its end (below)"
    else:
        said = outcome.value
    if result.snapshot.name != f"{result.scenario.name}.yaml":  # a per-host variant
        said += f" ({result.snapshot.name})"
    if result.pending is not None:
        said += f" (pending: {result.pending.name})"
    return f"{said} ({HOST_DIFFERS})" if result.snapshot_hosts is not None else said


def _lint(result: ScenarioResult) -> str:
    errors = sum(1 for finding in result.findings if finding.severity is Severity.ERROR)
    warnings = len(result.findings) - errors
    if not result.findings:
        return "ok"
    counted = f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}"
    return f"FAIL, {counted}" if result.lint_fails else counted


def scenario_line(result: ScenarioResult) -> str:
    said = "  ".join(f"{j.name}: {j.verdict}" for j in judgments(result))
    return (
        f"{verdict(result):<9} {result.scenario.name:<20} {result.calls:>7} calls "
        f"{result.seconds:>6.2f} s  {said}"
    )


def failure_blocks(
    result: ScenarioResult, config: LintConfig, *, accept: str, color: bool, full: bool
) -> list[str]:
    """What a failing scenario prints under the scenario lines: one block per failed
    judgment (a scenario that deviates from QEMU on purpose gets none: `diff` shows how)."""
    blocks = []
    name = result.scenario.name
    if result.comparison is not None and not result.comparison.ok:
        blocks.append(render_comparison(result.comparison, color=color, full=full, accept=accept))
    if result.conformance_outcome is ConformanceOutcome.FAILED and result.conformance is not None:
        blocks.append(render_conformance(result.conformance, name, full=full))
    live = result.live_conformance
    if result.live_outcome is ConformanceOutcome.FAILED and live is not None:
        blocks.append(render_conformance(live, name, full=full))
    if result.lint_fails:
        blocks.append(render_text(result.findings, name, config))
    return blocks


def json_report(report: GateReport, seconds: float) -> dict[str, object]:
    return {
        "ok": not report.failed,
        "seconds": round(seconds, 3),
        "scenarios": [_json_result(result) for result in report.results],
        "unused": [str(path) for path in report.unused],
    }


def _json_result(result: ScenarioResult) -> dict[str, object]:
    conformance = result.conformance
    outcome = result.conformance_outcome
    return {
        "scenario": result.scenario.name,
        "verdict": verdict(result),
        "result": result.snapshot_outcome.name.lower(),
        "snapshot": str(result.snapshot),
        "calls": result.calls,
        "host": {
            "snapshot": host_lines(result.snapshot_hosts, *SNAPSHOT_HOSTS),
            "reference": host_lines(result.reference_hosts, *REFERENCE_HOSTS),
            "explained": explained_lines(result.comparison) if result.comparison else [],
        },
        "run_failure": result.run_failure,
        "pending": None if result.pending is None else str(result.pending),
        "seconds": round(result.seconds, 3),
        "differences": [
            _json_difference(difference)
            for difference in (result.comparison.differences if result.comparison else [])
        ],
        "conformance": None
        if conformance is None or outcome is None
        else {
            "reference": str(conformance.reference.path),
            "ok": conformance.ok,
            "outcome": outcome.name.lower(),
            "deviations_not_allowed": len(conformance.failures),
            "deviations_allowed": len(conformance.deviations) - len(conformance.failures),
        },
        "live_conformance": None
        if result.live_conformance is None or result.live_outcome is None
        else {
            "ok": result.live_conformance.ok,
            "outcome": result.live_outcome.name.lower(),
            "deviations_not_allowed": len(result.live_conformance.failures),
        },
        "lint": [finding_record(finding) for finding in result.findings],
        "not_decisions_left_out": [
            {"call": item.call, "field": item.path, "why": item.row.why.value}
            for item in left_out(result)
        ],
    }


def left_out(result: ScenarioResult) -> list[LeftOut]:
    """What the scenario's comparisons (snapshot, QEMU reference) left out as not decisions."""
    snapshot = result.comparison.left_out if result.comparison is not None else []
    reference = result.conformance.left_out if result.conformance is not None else []
    return [*snapshot, *reference]


def _json_difference(difference: Difference) -> dict[str, object]:
    return {
        "kind": difference.kind.value,
        "thread": difference.thread,
        "call": difference.call_name,
        "expected_index": difference.expected_index,
        "actual_index": difference.actual_index,
        "expected_line": difference.expected_line,
        "field": difference.path,
        "expected": json_value(difference.expected),
        "actual": json_value(difference.actual),
    }


def html_section(result: ScenarioResult) -> ScenarioSection:
    notes = tuple(host_lines(result.snapshot_hosts, *SNAPSHOT_HOSTS)) + tuple(
        host_lines(result.reference_hosts, *REFERENCE_HOSTS)
    )
    return ScenarioSection(
        name=result.scenario.name,
        verdict=verdict(result),
        failed=result.fails,
        judgments=tuple(judgments(result)),
        comparison=result.comparison,
        conformance=result.conformance,
        findings=result.findings,
        notes=notes,
    )


SNAPSHOT_HOSTS = ("snapshot recorded on", "running on")
REFERENCE_HOSTS = ("QEMU reference recorded on", "running on")


def host_blocks(report: GateReport) -> list[str]:
    """The run's host blocks, said once: the snapshots' hosts against this one, then the QEMU
    references'. Scenarios that asked the host less (no CPUID) add no block of their own:
    every line any scenario found is in its kind's one block."""
    blocks = []
    for kind, words in enumerate((SNAPSHOT_HOSTS, REFERENCE_HOSTS)):
        heads: list[str] = []
        lines: list[str] = []
        for result in report.results:
            hosts = (result.snapshot_hosts, result.reference_hosts)[kind]
            found = host_lines(hosts, *words)
            if found:
                heads.append(found[0])
                lines.extend(line for line in found[1:] if line not in lines)
        if heads:
            head = max(heads, key=len)  # the one that names the CPUID tables
            blocks.append(render_host_lines([head, *lines]))
    return blocks


def accept_command(scenario: str, expected: Path, default: Path) -> str:
    """The command that accepts a scenario's new trace as its snapshot."""
    directory = "" if expected == default else f" --expected {expected}"
    return f"kvm-conformance check --update --scenario {scenario}{directory}"
