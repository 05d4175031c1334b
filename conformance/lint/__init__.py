"""KVM usage rules from real incidents, checked over a normalized trace.

    findings = lint(document, load_config(Path("pyproject.toml")))

One module per family (memory, cpuid_msr, irq, lifecycle, capabilities), each exporting RULES;
`catalog.RULES` is the table, `docs/rules.md` is generated from it.
"""

from conformance.lint.catalog import RULES, RULES_BY_ID
from conformance.lint.config import (
    LintConfig,
    LintConfigError,
    find_pyproject,
    load_config,
    project_config,
)
from conformance.lint.engine import Finding, Hit, Rule, Severity
from conformance.lint.runner import has_errors, lint

__all__ = [
    "RULES",
    "RULES_BY_ID",
    "Finding",
    "Hit",
    "LintConfig",
    "LintConfigError",
    "Rule",
    "Severity",
    "find_pyproject",
    "has_errors",
    "lint",
    "load_config",
    "project_config",
]
