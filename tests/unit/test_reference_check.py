"""Our scenarios map to the committed QEMU references; scenarios without one are skipped."""

from __future__ import annotations

from pathlib import Path

import pytest

from conformance.cli.main import main as cli_main
from conformance.gate.references import judge_against_reference, shipped_references
from conformance.model.document import Hex, TraceCall, TraceDocument
from conformance.model.scenarios import SCENARIOS
from conformance.qemu.scenarios import QEMU_SCENARIOS
from conformance.snapshot.store import read_document, write_document

REFERENCES = shipped_references()


def test_every_mapped_reference_is_committed_with_allowances_and_a_log() -> None:
    references = {s.reference for s in SCENARIOS.values() if s.reference is not None}
    for name in references | set(QEMU_SCENARIOS):
        document = read_document(REFERENCES / f"{name}.yaml")
        assert document.source["tool"] == "qemu" and document.source["scenario"] == name
        assert {"argv", "host", "qemu", "recorded"} <= set(document.source)
        assert (REFERENCES / f"{name}.allowances.yaml").exists()
        assert (REFERENCES / f"{name}.log").read_text().startswith("$ ")


def test_a_scenario_without_reference_is_not_checked() -> None:
    assert judge_against_reference(SCENARIOS["hello"], TraceDocument({}, {}), REFERENCES) is None


def test_a_reference_checked_against_itself_conforms() -> None:
    reference = read_document(REFERENCES / "memory-1g.yaml")
    result = judge_against_reference(SCENARIOS["qemu-memory-layout"], reference, REFERENCES)
    assert result is not None and result.ok and result.deviations == []


def test_diff_command_exit_statuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reference = str(REFERENCES / "memory-1g.yaml")
    html = tmp_path / "report.html"
    assert cli_main(["diff", reference, reference, "--html", str(html)]) == 0
    assert "all pass" in html.read_text() and "<h1>" in html.read_text()
    capsys.readouterr()
    subject = read_document(REFERENCES / "memory-1g.yaml")
    calls = subject.threads["main"]
    index, first_slot = next(
        (index, call)
        for index, call in enumerate(calls)
        if call.name == "KVM_SET_USER_MEMORY_REGION"
    )
    fields = first_slot.entry["in"]
    assert isinstance(fields, dict)
    # A loaded document is read-only (identical calls share an entry): a changed call is new.
    changed_entry = {**first_slot.entry, "in": {**fields, "guest_phys_addr": Hex(0x1000)}}
    calls[index] = TraceCall(changed_entry, first_slot.line)
    changed = tmp_path / "subject.yaml"
    write_document(changed, subject)
    assert cli_main(["diff", str(changed), reference]) == 1
    assert "in.guest_phys_addr: QEMU 0x0, subject 0x1000" in capsys.readouterr().out
    broken = tmp_path / "broken.yaml"
    broken.write_text("schema: something-else/1\n")
    assert cli_main(["diff", str(broken), reference]) == 2
