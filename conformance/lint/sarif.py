"""Findings as SARIF 2.1.0, the format code scanning (GitHub's among others) shows as alerts.

What code scanning needs to show a result, and what it gets here:
- a physical location: the trace file and the call's line, as a URI relative to the repository
  root (`%SRCROOT%`); a live trace (`lint -- CMD`) is written to a file first, so that its
  findings point into it too;
- rules with `help` (text and Markdown) and a `helpUri` to the rule's section of docs/rules.md;
- the tool's name, version and home;
- `partialFingerprints` that stay the same across runs, so that an alert is tracked, not
  reopened: the rule, the thread, the request and which of the rule's findings on that request
  it is, never the line (which moves when calls are added above it);
- disabled rules as configuration overrides of the run, with the project's reason, and a
  notification located at the `disable` entry of the project's pyproject.toml.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from conformance.lint.catalog import RULES
from conformance.lint.config import LintConfig
from conformance.lint.engine import Finding, Rule, Severity
from conformance.model.printable import shown, shown_data

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA_URI = (
    "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
)
ROOT_BASE = "%SRCROOT%"  # the uriBaseId every location is relative to: the repository root
FINGERPRINT = "kvmConformanceCall/v1"
_LEVELS = {Severity.ERROR: "error", Severity.WARNING: "warning"}
_INDEX = {rule.id: position for position, rule in enumerate(RULES)}

JsonObject = dict[str, object]


def repository_root(start: Path) -> Path:
    """The nearest directory from `start` up that holds `.git`; `start` itself if none does."""
    start = start.resolve()
    for directory in (start, *start.parents):
        if (directory / ".git").exists():
            return directory
    return start


def render_sarif(
    findings: Sequence[Finding],
    trace: Path | None,
    config: LintConfig,
    *,
    root: Path,
    version: str,
    home: str | None,
    docs: str | None,
) -> str:
    """`trace`: the file the findings' lines are in (None: no file, logical locations only);
    `root`: the repository root URIs are relative to; `home`: the project's home page; `docs`:
    where its docs/ folder is published (the rules' `helpUri`s are rules.md anchors there)."""
    run: JsonObject = {
        "tool": {"driver": _driver(version, home, docs)},
        "invocations": [_invocation(config, root)],
        "originalUriBaseIds": {ROOT_BASE: {"uri": root.resolve().as_uri() + "/"}},
        "results": _results(findings, trace, root),
    }
    if trace is not None:
        run["artifacts"] = [{"location": _artifact(trace, root)}]
    log = {"$schema": SARIF_SCHEMA_URI, "version": SARIF_VERSION, "runs": [run]}
    return json.dumps(shown_data(log), indent=2) + "\n"


def rules_uri(docs: str, rule_id: str) -> str:
    """The rule's section of docs/rules.md (its anchor is the id in lower case)."""
    return f"{docs.rstrip('/')}/rules.md#{rule_id.lower()}"


def _driver(version: str, home: str | None, docs: str | None) -> JsonObject:
    driver: JsonObject = {"name": "kvm-conformance", "version": version}
    if version[:1].isdigit():  # "unknown (not installed)" is no semantic version
        driver["semanticVersion"] = version
    if home is not None:
        driver["informationUri"] = home
    driver["rules"] = [_rule(rule, docs) for rule in RULES]
    return driver


def _rule(rule: Rule, docs: str | None) -> JsonObject:
    cited = ", ".join(rule.incidents) or "none (the KVM API documentation)"
    markdown = f"**{rule.title}**\n\n{rule.rationale}\n\nIncidents: {cited}."
    described: JsonObject = {
        "id": rule.id,
        "name": rule.name,
        "shortDescription": {"text": rule.title},
        "fullDescription": {"text": rule.rationale},
        "help": {"text": f"{rule.title}\n\n{rule.rationale}", "markdown": markdown},
        "defaultConfiguration": {"level": _LEVELS[rule.severity]},
        "properties": {
            "incidents": list(rule.incidents),
            "kernelSource": list(rule.kernel_source),
            "tags": ["kvm", "correctness"],
        },
    }
    if docs is not None:
        described["helpUri"] = rules_uri(docs, rule.id)
    return described


def _invocation(config: LintConfig, root: Path) -> JsonObject:
    invocation: JsonObject = {"executionSuccessful": True}
    overrides = [
        {
            "descriptor": {"id": rule_id, "index": _INDEX[rule_id]},
            "configuration": {"enabled": False, "properties": {"reason": shown(reason)}},
        }
        for rule_id, reason in sorted(config.disabled.items())
    ]
    if overrides:
        invocation["ruleConfigurationOverrides"] = overrides
    notifications = [
        _disabled_notice(rule_id, reason, config, root)
        for rule_id, reason in sorted(config.disabled.items())
        if config.path is not None
    ]
    if notifications:
        invocation["toolConfigurationNotifications"] = notifications
    return invocation


def _disabled_notice(rule_id: str, reason: str, config: LintConfig, root: Path) -> JsonObject:
    assert config.path is not None
    physical: JsonObject = {"artifactLocation": _artifact(config.path, root)}
    line = config.line_of(rule_id)
    if line is not None:
        physical["region"] = {"startLine": line}
    return {
        "descriptor": {"id": "disabled-rule"},
        "associatedRule": {"id": rule_id, "index": _INDEX[rule_id]},
        "level": "note",
        "message": {"text": f"{rule_id} is disabled: {shown(reason)}"},
        "locations": [{"physicalLocation": physical}],
    }


def _results(findings: Sequence[Finding], trace: Path | None, root: Path) -> list[JsonObject]:
    counted: dict[tuple[str, str, str], int] = {}
    results = []
    for finding in findings:
        same = (finding.rule_id, finding.thread, finding.request)
        counted[same] = counted.get(same, -1) + 1  # the rule's n-th finding on this request
        identity = "|".join((*same, str(counted[same])))
        results.append(_result(finding, trace, root, identity))
    return results


def _result(finding: Finding, trace: Path | None, root: Path, identity: str) -> JsonObject:
    location: JsonObject = {
        "logicalLocations": [
            {
                "name": shown(finding.request),
                "fullyQualifiedName": shown(finding.where),
                "kind": "member",
            }
        ]
    }
    if trace is not None:
        physical: JsonObject = {"artifactLocation": _artifact(trace, root)}
        if finding.line is not None:
            physical["region"] = {"startLine": finding.line}
        location["physicalLocation"] = physical
    return {
        "ruleId": finding.rule_id,
        "ruleIndex": _INDEX[finding.rule_id],
        "level": _LEVELS[finding.severity],
        "message": {"text": shown(finding.message)},
        "locations": [location],
        "partialFingerprints": {FINGERPRINT: hashlib.sha256(identity.encode()).hexdigest()},
        "properties": {"thread": shown(finding.thread), "callIndex": finding.index},
    }


def _artifact(path: Path, root: Path) -> JsonObject:
    """A file as code scanning finds it: relative to the repository root when inside it."""
    absolute = path.resolve()
    try:
        relative = absolute.relative_to(root.resolve())
    except ValueError:
        return {"uri": absolute.as_uri()}
    return {"uri": quote(relative.as_posix()), "uriBaseId": ROOT_BASE}
