"""The conformance step of `kvm-conformance check`: a scenario's trace against the QEMU
reference its record names, with the allowances beside that reference."""

from __future__ import annotations

from pathlib import Path

from conformance.compare.allowances import Allowances, allowances_beside, load_allowances
from conformance.compare.conformance import ConformanceResult, compare_with_reference
from conformance.model.document import TraceDocument
from conformance.model.scenarios import Scenario
from conformance.snapshot.store import read_document

REFERENCE_DIRECTORY = Path("traces/qemu")  # relative to the repository root


def judge_against_reference(
    scenario: Scenario, document: TraceDocument, references: Path = REFERENCE_DIRECTORY
) -> ConformanceResult | None:
    """None when the scenario has no QEMU reference (hello, hello-long, exits-100k)."""
    if scenario.reference is None:
        return None
    path = references / f"{scenario.reference}.yaml"
    allowances_path = allowances_beside(path)
    allowances = load_allowances(allowances_path) if allowances_path.exists() else Allowances()
    return compare_with_reference(document, read_document(path), allowances)
