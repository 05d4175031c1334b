"""The VMM core's scenarios, traced for real and normalized: the same YAML, byte for byte, run
after run; and a snapshot written from one run compares clean against the next.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conformance.compare import compare_documents
from conformance.normalize import Normalizer
from conformance.snapshot import SnapshotStore, dump_document, load_document
from conformance.tracer import trace

pytestmark = [pytest.mark.needs_kvm, pytest.mark.needs_ptrace]

_RUNS = 3


@pytest.fixture
def one_cpu() -> Iterator[None]:
    """Run the VMM on one CPU: KVM_GET_SUPPORTED_CPUID answers with the APIC ID of the CPU it
    ran on (CPUID 1 EBX[31:24], CPUID 0xB EDX), which would make runs differ by scheduling."""
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(affinity)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, affinity)


def traced_scenario(scenario: str) -> str:
    normalizer = Normalizer({"scenario": scenario, "tool": "kvm-conformance vmm"})
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        outcome = trace(
            [sys.executable, "-m", "conformance", "run", scenario], normalizer.add, stdout=devnull
        )
    finally:
        os.close(devnull)
    assert outcome.opened_kvm, outcome.message
    return dump_document(normalizer.finish())


@pytest.mark.usefixtures("one_cpu")
@pytest.mark.parametrize("scenario", ["memory-setup", "qemu-memory-layout", "hello", "tiny-bios"])
def test_traces_of_a_scenario_are_byte_identical(scenario: str) -> None:
    runs = [traced_scenario(scenario) for _ in range(_RUNS)]
    assert runs[1] == runs[0]
    assert runs[2] == runs[0]
    document = load_document(runs[0], f"{scenario}.yaml")
    assert dump_document(document) == runs[0]
    assert "main" in document.threads


@pytest.mark.usefixtures("one_cpu")
def test_qemu_memory_layout_names_the_reservation_and_the_ram_inside() -> None:
    main = load_document(traced_scenario("qemu-memory-layout"), "t.yaml").threads["main"]
    mmaps = [call.entry for call in main if call.entry["call"] == "mmap"]
    assert mmaps[0]["prot"] == ["PROT_NONE"] and mmaps[0]["ret"] == "region0"
    assert mmaps[1]["addr"] == "region0+0x0" and mmaps[1]["ret"] == "ram0"
    [slot] = [call.entry for call in main if call.name == "KVM_SET_USER_MEMORY_REGION"]
    assert isinstance(slot["in"], dict) and slot["in"]["userspace_addr"] == "ram0+0x0"


@pytest.mark.usefixtures("one_cpu")
def test_a_stored_snapshot_compares_clean_against_the_next_run(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    first = load_document(traced_scenario("hello"), "first")
    assert store.save("hello", first) == "created"
    stored = store.load("hello")
    assert stored is not None
    second = load_document(traced_scenario("hello"), "second")
    comparison = compare_documents(stored, second, scenario="hello")
    assert comparison.ok, comparison.differences[:5]
    assert store.save("hello", second) == "unchanged"
