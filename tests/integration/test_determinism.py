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
    first = dump_document(trace_scenario(SCENARIOS[scenario]).document)
    differing = [
        run
        for run in range(1, RUNS)
        if dump_document(trace_scenario(SCENARIOS[scenario]).document) != first
    ]
    assert not differing, f"runs {differing} of {RUNS} differ from run 0"


@pytest.mark.parametrize("scenario", ["hello", "tiny-bios"])
def test_a_trace_is_the_same_whichever_cpu_ran_it(scenario: str) -> None:
    """KVM answers the supported CPUID with the APIC ID of the CPU that ran the ioctl: the trace
    must not show which one that was (model/host_profile.py, model/host_symbols.py)."""
    cpus = sorted(os.sched_getaffinity(0))
    assert len(cpus) >= 2, "this test needs two CPUs to run the VMM on"
    texts = []
    try:
        for cpu in cpus[:2]:
            os.sched_setaffinity(0, {cpu})  # the traced VMM inherits it
            texts.append(dump_document(trace_scenario(SCENARIOS[scenario]).document))
    finally:
        os.sched_setaffinity(0, cpus)
    assert texts[0] == texts[1]
