"""Our scenarios map to the committed QEMU references; scenarios without one are skipped."""

from __future__ import annotations

from pathlib import Path

from conformance.document import TraceDocument
from conformance.qemu_scenarios import QEMU_SCENARIOS, REFERENCE_FOR_SCENARIO
from conformance.reference_check import check_against_reference
from conformance.snapshot import read_document

REFERENCES = Path(__file__).parents[2] / "traces" / "qemu"


def test_every_mapped_reference_is_committed_with_rules_and_a_log() -> None:
    for name in set(REFERENCE_FOR_SCENARIO.values()) | set(QEMU_SCENARIOS):
        document = read_document(REFERENCES / f"{name}.yaml")
        assert document.source["tool"] == "qemu" and document.source["scenario"] == name
        assert {"argv", "host", "qemu", "recorded"} <= set(document.source)
        assert (REFERENCES / f"{name}.rules.yaml").exists()
        assert (REFERENCES / f"{name}.log").read_text().startswith("$ ")


def test_a_scenario_without_reference_is_not_checked() -> None:
    assert check_against_reference("hello", TraceDocument({}, {}), REFERENCES) is None


def test_a_reference_checked_against_itself_conforms() -> None:
    reference = read_document(REFERENCES / "memory-1g.yaml")
    result = check_against_reference("qemu-memory-layout", reference, REFERENCES)
    assert result is not None and result.ok and result.deviations == []
