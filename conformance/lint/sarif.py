"""Findings as SARIF 2.1.0, the format CI code-scanning services read as annotations.

Each finding is a result located in the trace file (its line, when the trace was read from a
file) and logically at `thread[index] REQUEST`. Disabled rules are reported as configuration
overrides of the run's invocation, with the project's reason.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Sequence

from conformance.lint.catalog import RULES
from conformance.lint.config import LintConfig
from conformance.lint.engine import Finding, Severity
from conformance.model.printable import printable_data

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA_URI = (
    "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
)
_LEVELS = {Severity.ERROR: "error", Severity.WARNING: "warning"}
_INDEX = {rule.id: position for position, rule in enumerate(RULES)}

JsonObject = dict[str, object]


def render_sarif(findings: Sequence[Finding], trace: str | None, config: LintConfig) -> str:
    """`trace`: the trace file's path (relative paths stay relative), None for a live trace."""
    run: JsonObject = {
        "tool": {"driver": _driver()},
        "invocations": [_invocation(config)],
        "results": [_result(finding, trace) for finding in findings],
    }
    log = {"$schema": SARIF_SCHEMA_URI, "version": SARIF_VERSION, "runs": [run]}
    return json.dumps(printable_data(log), indent=2) + "\n"


def _driver() -> JsonObject:
    return {
        "name": "kvm-conformance",
        "rules": [
            {
                "id": rule.id,
                "name": rule.name,
                "shortDescription": {"text": rule.title},
                "fullDescription": {"text": rule.rationale},
                "defaultConfiguration": {"level": _LEVELS[rule.severity]},
                "properties": {"incidents": list(rule.incidents)},
            }
            for rule in RULES
        ],
    }


def _invocation(config: LintConfig) -> JsonObject:
    overrides = [
        {
            "descriptor": {"id": rule_id, "index": _INDEX[rule_id]},
            "configuration": {"enabled": False, "properties": {"reason": reason}},
        }
        for rule_id, reason in sorted(config.disabled.items())
    ]
    invocation: JsonObject = {"executionSuccessful": True}
    if overrides:
        invocation["ruleConfigurationOverrides"] = overrides
    return invocation


def _result(finding: Finding, trace: str | None) -> JsonObject:
    location: JsonObject = {
        "logicalLocations": [
            {"name": finding.request, "fullyQualifiedName": finding.where, "kind": "member"}
        ]
    }
    if trace is not None:
        physical: JsonObject = {"artifactLocation": {"uri": urllib.parse.quote(trace)}}
        if finding.line is not None:
            physical["region"] = {"startLine": finding.line}
        location["physicalLocation"] = physical
    return {
        "ruleId": finding.rule_id,
        "ruleIndex": _INDEX[finding.rule_id],
        "level": _LEVELS[finding.severity],
        "message": {"text": finding.message},
        "locations": [location],
        "properties": {"thread": finding.thread, "callIndex": finding.index},
    }
