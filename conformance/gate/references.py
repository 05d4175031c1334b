"""The conformance step of `kvm-conformance check`: a scenario of our VMM core against the QEMU
reference it is mapped to (`qemu_scenarios.REFERENCE_FOR_SCENARIO`), with the rules beside it."""

from __future__ import annotations

from pathlib import Path

from conformance.compare.allowances import Rules, load_rules, rules_beside
from conformance.compare.conformance import ConformanceResult, check_conformance
from conformance.model.document import TraceDocument
from conformance.qemu.scenarios import REFERENCE_FOR_SCENARIO
from conformance.snapshot.store import read_document

REFERENCE_DIRECTORY = Path("traces/qemu")  # relative to the repository root


def check_against_reference(
    scenario: str, document: TraceDocument, references: Path = REFERENCE_DIRECTORY
) -> ConformanceResult | None:
    """None when the scenario has no QEMU reference (hello, hello-long, exits-100k)."""
    name = REFERENCE_FOR_SCENARIO.get(scenario)
    if name is None:
        return None
    path = references / f"{name}.yaml"
    rules_path = rules_beside(path)
    rules = load_rules(rules_path) if rules_path.exists() else Rules()
    return check_conformance(document, read_document(path), rules)
