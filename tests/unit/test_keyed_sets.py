"""CPUID entries and MSR lists compared as keyed sets."""

from __future__ import annotations

from conformance.compare.keyed_sets import (
    GUEST_MUTABLE_CPUID,
    KeyedDifference,
    cpuid_differences,
    keyed_comparer,
    msr_differences,
)
from conformance.model.document import Value

LEAF0: dict[str, Value] = {"function": 0x0, "index": 0x0, "flags": 0, "eax": 0xD, "ebx": 1}
LEAF1: dict[str, Value] = {"function": 0x1, "index": 0x0, "flags": 0, "eax": 0x306A9, "ecx": 0}
LEAF7: dict[str, Value] = {"function": 0x7, "index": 0x1, "flags": 1, "eax": 0, "ebx": 0}


def test_cpuid_order_does_not_matter() -> None:
    assert cpuid_differences([LEAF0, LEAF1, LEAF7], [LEAF7, LEAF0, LEAF1]) == []


def test_cpuid_differences_are_named_by_function_and_index() -> None:
    changed = {**LEAF1, "eax": 0x306A8}
    assert cpuid_differences([LEAF0, LEAF1], [changed, LEAF7]) == [
        KeyedDifference("0x0/0x0", "", dict(LEAF0), None),
        KeyedDifference("0x1/0x0", "eax", 0x306A9, 0x306A8),
        KeyedDifference("0x7/0x1", "", None, dict(LEAF7)),
    ]


def test_guest_mutable_bits_are_masked_unless_asked_otherwise() -> None:
    osxsave = {**LEAF1, "ecx": 1 << 27}
    assert cpuid_differences([LEAF1], [osxsave]) == []
    assert cpuid_differences([LEAF1], [osxsave], masks=()) != []
    assert all(mask.why for mask in GUEST_MUTABLE_CPUID)


def test_msr_lists_are_sets_of_indices() -> None:
    tsc: dict[str, Value] = {"index": 0x10, "reserved": 0, "data": 5}
    deadline: dict[str, Value] = {"index": 0x6E0, "reserved": 0, "data": 9}
    assert msr_differences([tsc, deadline], [deadline, tsc]) == []
    assert msr_differences([0x10, 0x6E0], [0x6E0]) == [KeyedDifference("0x10", "", {}, None)]
    assert msr_differences([tsc], [{**tsc, "data": 6}]) == [KeyedDifference("0x10", "data", 5, 6)]


def test_the_comparator_finds_the_set_fields_by_request_and_path() -> None:
    assert keyed_comparer("KVM_SET_CPUID2", "in.entries") is not None
    assert keyed_comparer("KVM_SET_MSRS", "in.entries") is msr_differences
    assert keyed_comparer("KVM_SET_GSI_ROUTING", "in.entries") is None
