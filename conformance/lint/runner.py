"""`lint(document, config)`: every enabled rule over one trace document."""

from __future__ import annotations

from collections.abc import Sequence

from conformance.lint.catalog import RULES
from conformance.lint.config import LintConfig
from conformance.lint.engine import Finding, Severity
from conformance.model.document import TraceDocument, thread_role_order


def lint(document: TraceDocument, config: LintConfig | None = None) -> list[Finding]:
    """Findings in trace order: by thread (as documents list them), call, then rule id."""
    disabled = config.disabled if config is not None else {}
    findings = [
        finding for rule in RULES if rule.id not in disabled for finding in rule.findings(document)
    ]
    findings.sort(key=lambda f: (thread_role_order(f.thread), f.index, f.rule_id, f.message))
    return findings


def has_errors(findings: Sequence[Finding]) -> bool:
    return any(finding.severity is Severity.ERROR for finding in findings)
