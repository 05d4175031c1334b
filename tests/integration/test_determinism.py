"""Each scenario of the VMM core, traced again and again, gives the same YAML byte for byte.

KVM_CONFORMANCE_DETERMINISM_RUNS sets how many traces per scenario (default 3; the issue's
acceptance run used 50).
"""

from __future__ import annotations

import os

import pytest

from conformance.gate.scenarios import trace_scenario
from conformance.model.scenarios import SCENARIOS
from conformance.snapshot.store import dump_document

pytestmark = [pytest.mark.needs_kvm, pytest.mark.needs_ptrace]

RUNS = int(os.environ.get("KVM_CONFORMANCE_DETERMINISM_RUNS", "3"))


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_trace_of_a_scenario_is_byte_identical(scenario: str) -> None:
    first = dump_document(trace_scenario(scenario).document)
    differing = [
        run for run in range(1, RUNS) if dump_document(trace_scenario(scenario).document) != first
    ]
    assert not differing, f"runs {differing} of {RUNS} differ from run 0"
