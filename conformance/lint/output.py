"""Findings as text (one line each, compiler style) and as JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence

from conformance.lint.catalog import RULES_BY_ID
from conformance.lint.config import LintConfig
from conformance.lint.engine import Finding, Severity
from conformance.model.printable import shown, shown_data

JSON_SCHEMA = "kvm-conformance-lint/1"


def render_text(findings: Sequence[Finding], trace: str, config: LintConfig) -> str:
    """`trace.yaml:42: main[12] KVM_RUN: error KVMC006: message [incident]`, then a summary."""
    lines = []
    for finding in findings:
        where = f"{trace}:{finding.line}" if finding.line is not None else trace
        incidents = RULES_BY_ID[finding.rule_id].incidents
        cited = f" [{', '.join(incidents)}]" if incidents else ""
        lines.append(
            shown(
                f"{where}: {finding.where}: {finding.severity.value} {finding.rule_id}: "
                f"{finding.message}{cited}"
            )
        )
    errors = sum(1 for f in findings if f.severity is Severity.ERROR)
    warnings = len(findings) - errors
    summary = shown(f"{trace}: {_count(errors, 'error')}, {_count(warnings, 'warning')}")
    if config.disabled:
        reasons = (f"{rule_id}: {reason}" for rule_id, reason in sorted(config.disabled.items()))
        summary += shown(f" (disabled: {'; '.join(reasons)})")
    return "\n".join([*lines, summary]) + "\n"


def render_json(findings: Sequence[Finding], trace: str, config: LintConfig) -> str:
    document = {
        "schema": JSON_SCHEMA,
        "trace": trace,
        "findings": [finding_record(finding) for finding in findings],
        "disabled": [
            {"id": rule_id, "reason": reason} for rule_id, reason in sorted(config.disabled.items())
        ],
    }
    return json.dumps(shown_data(document), indent=2) + "\n"


def finding_record(finding: Finding) -> dict[str, object]:
    """One finding as JSON data: the shape of `lint --format json` and of `check --format json`."""
    rule = RULES_BY_ID[finding.rule_id]
    return {
        "rule": finding.rule_id,
        "title": rule.title,
        "severity": finding.severity.value,
        "thread": finding.thread,
        "index": finding.index,
        "request": finding.request,
        "line": finding.line,
        "message": finding.message,
        "incidents": list(rule.incidents),
        "kernel_source": list(rule.kernel_source),
    }


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
