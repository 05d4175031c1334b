"""Regression comparison: alignment, field paths, kernel answers ignored unless opted in."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conformance.compare.regression import (
    ABSENT,
    CompareOptions,
    CompareOptionsError,
    Difference,
    DifferenceKind,
    compare_documents,
)
from conformance.model.document import TraceDocument
from conformance.report.diff import render_comparison
from conformance.snapshot.store import SnapshotError, load_document

EXPECTED = """\
schema: kvm-conformance/2
source: {tool: kvm-conformance-vmm}
threads:
  main:
  - {call: open, path: /dev/kvm, flags: [O_RDWR, O_CLOEXEC], ret: kvm}
  - {call: ioctl, fd: kvm, req: KVM_GET_API_VERSION, out: {ret: 12}}
  - {call: ioctl, fd: kvm, req: KVM_CREATE_VM, arg: 0, ret: vm}
  - {call: mmap, len: 0x40000, prot: [PROT_READ, PROT_WRITE], flags: [MAP_PRIVATE], ret: ram0}
  - {call: ioctl, fd: vm, req: KVM_SET_USER_MEMORY_REGION, in: {slot: 0, flags: [],
      guest_phys_addr: 0x0, memory_size: 0x40000, userspace_addr: ram0+0x0}}
  - {call: ioctl, fd: vm, req: KVM_CREATE_VCPU, arg: 0, ret: vcpu0}
  vcpu0:
  - {call: ioctl, fd: vcpu0, req: KVM_GET_SREGS, out: {cs: {base: 0xffff0000, selector: 0xf000}}}
  - {call: ioctl, fd: vcpu0, req: KVM_SET_SREGS, in: {cs: {base: 0x0, selector: 0x0}}}
  - {call: ioctl, fd: vcpu0, req: KVM_RUN, exit: {reason: KVM_EXIT_IO, port: 0x3f8, data: [0x48]},
    repeat: 3}
  - {call: ioctl, fd: vcpu0, req: KVM_RUN, exit: {reason: KVM_EXIT_HLT}}
"""


def document(text: str, name: str = "actual.yaml") -> TraceDocument:
    return load_document(text, name)


def differences(actual: str, options: CompareOptions | None = None) -> list[Difference]:
    expected = document(EXPECTED, "expected/hello.yaml")
    return compare_documents(
        expected, document(actual), scenario="hello", options=options
    ).differences


def test_identical_traces_have_no_differences() -> None:
    assert differences(EXPECTED) == []


def test_a_changed_input_is_named_by_thread_call_and_field() -> None:
    [difference] = differences(EXPECTED.replace("guest_phys_addr: 0x0", "guest_phys_addr: 0x1000"))
    assert difference.kind is DifferenceKind.FIELD
    assert (difference.thread, difference.expected_index, difference.actual_index) == ("main", 4, 4)
    assert difference.call_name == "KVM_SET_USER_MEMORY_REGION"
    assert (difference.path, difference.expected, difference.actual) == (
        "in.guest_phys_addr",
        0,
        0x1000,
    )
    assert difference.expected_line == 9


def test_one_inserted_call_is_one_difference() -> None:
    create_vcpu = "  - {call: ioctl, fd: vm, req: KVM_CREATE_VCPU"
    irqchip = "  - {call: ioctl, fd: vm, req: KVM_CREATE_IRQCHIP}\n"
    inserted = EXPECTED.replace(create_vcpu, irqchip + create_vcpu)
    [difference] = differences(inserted)
    assert difference.kind is DifferenceKind.EXTRA_CALL
    assert (difference.call_name, difference.actual_index, difference.expected_index) == (
        "KVM_CREATE_IRQCHIP",
        5,
        5,
    )


def test_a_lost_call_is_one_difference() -> None:
    [difference] = differences(
        EXPECTED.replace(
            "  - {call: ioctl, fd: kvm, req: KVM_GET_API_VERSION, out: {ret: 12}}\n", ""
        )
    )
    assert difference.kind is DifferenceKind.MISSING_CALL
    assert (difference.call_name, difference.expected_index, difference.expected_line) == (
        "KVM_GET_API_VERSION",
        1,
        6,
    )


def test_kernel_answers_are_ignored_unless_opted_in() -> None:
    changed = EXPECTED.replace("out: {ret: 12}", "out: {ret: 13}").replace(
        "base: 0xffff0000", "base: 0xfff00000"
    )
    assert differences(changed) == []
    opted = differences(changed, CompareOptions(compare_outputs=("out.ret",)))
    assert [(d.call_name, d.path) for d in opted] == [("KVM_GET_API_VERSION", "out.ret")]
    everything = differences(changed, CompareOptions(compare_outputs=("out",)))
    assert [d.path for d in everything] == ["out.ret", "out.cs.base"]


def test_ignored_paths_are_not_compared() -> None:
    changed = EXPECTED.replace("selector: 0x0", "selector: 0x8").replace(
        "port: 0x3f8", "port: 0x2f8"
    )
    assert [d.path for d in differences(changed)] == ["in.cs.selector", "exit.port"]
    assert differences(changed, CompareOptions(ignore=("in.cs", "exit"))) == []


def test_repeat_counts_are_compared_as_a_field() -> None:
    [difference] = differences(EXPECTED.replace("repeat: 3", "repeat: 4"))
    assert (difference.path, difference.expected, difference.actual) == ("repeat", 3, 4)


def test_a_field_only_one_side_has_is_absent_on_the_other() -> None:
    [difference] = differences(EXPECTED.replace("KVM_CREATE_VM, arg: 0,", "KVM_CREATE_VM,"))
    assert (difference.path, difference.expected, difference.actual) == ("arg", 0, ABSENT)


def test_types_matter_but_hex_is_presentation() -> None:
    assert differences(EXPECTED.replace("guest_phys_addr: 0x0", "guest_phys_addr: 0")) == []
    [difference] = differences(EXPECTED.replace("in: {slot: 0,", "in: {slot: '0',"))
    assert (difference.expected, difference.actual) == (0, "0")


def test_missing_and_extra_threads() -> None:
    renamed = EXPECTED.replace("  vcpu0:\n", "  vcpu1:\n")
    found = differences(renamed)
    assert [(d.kind, d.thread) for d in found] == [
        (DifferenceKind.MISSING_THREAD, "vcpu0"),
        (DifferenceKind.EXTRA_THREAD, "vcpu1"),
    ]
    assert (found[0].expected, found[1].actual) == (4, 4)


def test_options_from_scenario_yaml_are_validated() -> None:
    options = CompareOptions.from_mapping(
        {"compare_outputs": ["out.ret"], "ignore": ["exit"]}, "scenarios/hello.yaml"
    )
    assert options == CompareOptions(compare_outputs=("out.ret",), ignore=("exit",))
    assert CompareOptions.from_mapping(None, "x") == CompareOptions()
    with pytest.raises(CompareOptionsError, match=r"hello\.yaml: unknown comparison option"):
        CompareOptions.from_mapping({"compare": []}, "hello.yaml")
    with pytest.raises(CompareOptionsError, match="'ignore' must be a list"):
        CompareOptions.from_mapping({"ignore": "exit"}, "hello.yaml")


# -- fuzzing: a mutated snapshot either loads and compares, or is a SnapshotError with a line --

_TOKENS = st.sampled_from(
    [": ", "- ", "{", "}", "[", "]", ",", "*a", "&a ", "!!python/object:os.system ", "0x",
     "? ", "|", "'", '"', "#", "\t", "\x00", "null", "1.5", "<<: ", "---\n", "  ", "\n",
     "repeat: 0", "in: 1", "out: []", "call: ioctl", "req: 5"]
)  # fmt: skip


@settings(max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_fuzz_mutated_snapshots_load_and_compare_or_name_file_and_line(
    data: st.DataObject,
) -> None:
    text = EXPECTED
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 12))
        insert = data.draw(st.one_of(_TOKENS, st.text(max_size=6)))
        text = text[:position] + insert + text[position + cut :]
    try:
        mutated = load_document(text, "expected/hello.yaml")
    except SnapshotError as error:
        assert error.path == Path("expected/hello.yaml")
        assert error.line is not None and 1 <= error.line <= len(text.splitlines()) + 2, error
        return
    original = document(EXPECTED)
    assert compare_documents(mutated, mutated, scenario="hello").ok
    compare_documents(mutated, original, scenario="hello")
    render_comparison(compare_documents(original, mutated, scenario="hello"), color=True)


CPUID_TRACE = """\
schema: kvm-conformance/2
source: {{tool: kvm-conformance-vmm}}
threads:
  main:
  - {{call: ioctl, fd: vcpu0, req: KVM_SET_CPUID2, in: {{nent: {count}, entries: [{entries}]}}}}
  - {{call: ioctl, fd: vcpu0, req: KVM_SET_MSRS, in: {{nmsrs: 2, entries: [{msrs}]}}}}
"""
LEAF_0 = "{function: 0x0, index: 0x0, eax: 0xd, ebx: 0x1, ecx: 0x2, edx: 0x3}"
LEAF_1 = "{function: 0x1, index: 0x0, eax: 0x1, ebx: 0x0, ecx: 0x0, edx: 0x0}"
LEAF_7 = "{function: 0x7, index: 0x0, eax: 0x0, ebx: 0x9, ecx: 0x0, edx: 0x0}"
MSR_TSC = "{index: 0x10, data: 0x0}"
MSR_EFER = "{index: 0xc0000080, data: 0x500}"


def _cpuid_trace(entries: list[str], msrs: list[str]) -> str:
    return CPUID_TRACE.format(count=len(entries), entries=", ".join(entries), msrs=", ".join(msrs))


def test_cpuid_entries_and_msrs_compare_as_sets_not_by_position() -> None:
    expected = document(_cpuid_trace([LEAF_0, LEAF_1], [MSR_TSC, MSR_EFER]), "expected.yaml")
    reordered = document(_cpuid_trace([LEAF_1, LEAF_0], [MSR_EFER, MSR_TSC]))
    assert compare_documents(expected, reordered, scenario="cpuid").differences == []


def test_one_extra_cpuid_leaf_is_one_difference_named_by_its_key() -> None:
    expected = document(_cpuid_trace([LEAF_0, LEAF_1], [MSR_TSC, MSR_EFER]), "expected.yaml")
    actual = document(
        _cpuid_trace([LEAF_0, LEAF_7, LEAF_1], [MSR_TSC, MSR_EFER.replace("0x500", "0xd01")])
    )
    found = compare_documents(expected, actual, scenario="cpuid").differences
    assert [(d.path, d.expected, d.actual) for d in found if d.path != "in.nent"] == [
        (
            "in.entries[0x7/0x0]",
            ABSENT,
            {"function": 7, "index": 0, "eax": 0, "ebx": 9, "ecx": 0, "edx": 0},
        ),
        ("in.entries[0xc0000080].data", 0x500, 0xD01),
    ]


def test_an_ignored_path_can_be_limited_to_one_request() -> None:
    expected = document(_cpuid_trace([LEAF_0], [MSR_TSC, MSR_EFER]), "expected.yaml")
    actual = document(_cpuid_trace([LEAF_1], [MSR_TSC, MSR_EFER.replace("0x500", "0xd01")]))
    only_cpuid = CompareOptions(ignore=("KVM_SET_CPUID2:in",))
    found = compare_documents(expected, actual, scenario="cpuid", options=only_cpuid).differences
    assert [(d.call_name, d.path) for d in found] == [
        ("KVM_SET_MSRS", "in.entries[0xc0000080].data")
    ]
