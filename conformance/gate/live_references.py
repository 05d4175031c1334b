"""`check --qemu live`: QEMU's references recorded on this host as the check runs.

Apart from references.py because it runs QEMU under the tracer: only `check` imports it, so that
commands that never trace (`run`, `diff`) do not load the tracer.
"""

from __future__ import annotations

from pathlib import Path

from conformance.compare.conformance import ConformanceResult, compare_with_reference
from conformance.gate.references import scenario_allowances, shipped_reference
from conformance.model.document import TraceDocument
from conformance.model.scenarios import Scenario
from conformance.qemu.recording import find_qemu, record_qemu
from conformance.qemu.scenarios import qemu_scenario


class LiveReferences:
    """QEMU's references recorded on this host as `check --qemu live` runs, each once.

    The shipped reference was recorded on some host; the live one on this one. A scenario is
    held against both, with the shipped reference's allowances: a VMM that conforms on one
    host's QEMU and not on this one's (or the other way) is told so by name.
    """

    def __init__(self) -> None:
        self.qemu = find_qemu(None)  # QemuMissingError (an environment error) before any trace
        self._recorded: dict[str, TraceDocument] = {}

    def judge(
        self, scenario: Scenario, document: TraceDocument, references: Path | None = None
    ) -> ConformanceResult | None:
        """None when the scenario has no shipped QEMU reference (none to record live)."""
        if not isinstance(scenario.reference, str):
            return None
        name = scenario.reference
        if name not in self._recorded:
            self._recorded[name] = record_qemu(qemu_scenario(name), self.qemu).document
        reference = self._recorded[name]
        reference.path = Path(f"{name} (live)")
        shipped = shipped_reference(name, references)
        return compare_with_reference(document, reference, scenario_allowances(scenario, shipped))
