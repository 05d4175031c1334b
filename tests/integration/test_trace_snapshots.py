"""The VMM core's scenarios, traced for real and normalized: the QEMU-style layout named as what
it is, and a snapshot written from one run compares clean against the next and is rewritten
unchanged. Byte-identical traces of every scenario run after run: test_determinism.py.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from conformance.compare.regression import compare_documents
from conformance.normalize.normalizer import Normalizer
from conformance.snapshot.store import SnapshotStore, dump_document, load_document
from conformance.tracer import trace

pytestmark = [pytest.mark.needs_kvm, pytest.mark.needs_ptrace]


def traced_scenario(scenario: str) -> str:
    normalizer = Normalizer({"scenario": scenario, "tool": "kvm-conformance vmm"})
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        outcome = trace(
            [sys.executable, "-m", "conformance", "run", scenario],
            normalizer.add,
            stdout=devnull,
            # The host's answers under `out:` (KVM_GET_SUPPORTED_CPUID) carry the APIC ID of the
            # CPU that answered: a file is byte-identical run after run only on one CPU.
            pin=True,
        )
    finally:
        os.close(devnull)
    assert outcome.opened_kvm, outcome.message
    return dump_document(normalizer.finish())


def test_qemu_memory_layout_names_the_reservation_and_the_ram_inside() -> None:
    main = load_document(traced_scenario("qemu-memory-layout"), "t.yaml").threads["main"]
    mmaps = [call.entry for call in main if call.entry["call"] == "mmap"]
    assert mmaps[0]["prot"] == ["PROT_NONE"] and mmaps[0]["ret"] == "region0"
    assert mmaps[1]["addr"] == "region0+0x0" and mmaps[1]["ret"] == "ram0"
    [slot] = [call.entry for call in main if call.name == "KVM_SET_USER_MEMORY_REGION"]
    assert isinstance(slot["in"], dict) and slot["in"]["userspace_addr"] == "ram0+0x0"


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
