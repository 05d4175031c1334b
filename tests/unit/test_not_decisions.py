"""Fields that are not a VMM's decision are left out of every comparison, and said so.

On QEMU's committed tiny-bios reference, changed the way a second QEMU run changes it (the
PIT's load times, kvmclock, the TSC, SREGS2's stack-byte PDPTRs, IRQCHIP padding), and the way
another VMM could (padding, entries past a count, a deleted slot's addresses): no difference,
no deviation, and each left-out difference named with its reason."""

from __future__ import annotations

import copy
import ctypes
from collections.abc import Callable
from pathlib import Path

import pytest

from conformance.abi import _generated as abi
from conformance.abi.ioctls import IOCTLS
from conformance.abi.not_decisions import ROWS, Why
from conformance.compare import decisions
from conformance.compare.conformance import compare_with_reference
from conformance.compare.regression import compare_documents
from conformance.model import register_pages
from conformance.model.document import Entry, Hex, TraceCall, TraceDocument, Value
from conformance.pytest_plugin.snapshots import SnapshotSession
from conformance.report.left_out import render_left_out
from conformance.snapshot.store import read_document

REFERENCE = Path(__file__).parents[2] / "traces" / "qemu" / "tiny-bios.yaml"
MSR_IA32_TSC = 0x10


@pytest.fixture(scope="module")
def reference() -> TraceDocument:
    return read_document(REFERENCE)


def _changed(
    document: TraceDocument, request: str, change: Callable[[dict[str, Value]], None]
) -> TraceDocument:
    """A copy of `document` with `change` applied to the `in` of every call of `request`."""
    copied = TraceDocument(dict(document.source), {}, document.path)
    for role, calls in document.threads.items():
        copied.threads[role] = []
        for call in calls:
            entry: Entry = copy.deepcopy(call.entry)
            section = entry.get("in")
            if call.name == request and isinstance(section, dict):
                change(section)
            copied.threads[role].append(TraceCall(entry, call.line))
    return copied


def _another_run(document: TraceDocument) -> TraceDocument:
    """What a second recording of the same QEMU changes: clocks and stack bytes."""

    def pit(section: dict[str, Value]) -> None:
        channels = section["channels"]
        assert isinstance(channels, list)
        for channel in channels:
            assert isinstance(channel, dict)
            channel["count_load_time"] = Hex(0x1DA11A49807)

    def sregs2(section: dict[str, Value]) -> None:
        assert section["flags"] == 0
        section["pdptrs"] = [Hex(0), Hex(0), Hex(0x46505845), Hex(0x4545DFD36E43DB00)]

    def irqchip(section: dict[str, Value]) -> None:
        section["pad"] = Hex(0x561A)
        chip = section["chip"]
        if isinstance(chip, dict) and isinstance(chip.get("ioapic"), dict):
            ioapic = chip["ioapic"]
            assert isinstance(ioapic, dict)
            ioapic["pad"] = Hex(0x561A)

    def clock(section: dict[str, Value]) -> None:
        section["clock"] = Hex(0x3B2253F)

    def msrs(section: dict[str, Value]) -> None:
        entries = section["entries"]
        assert isinstance(entries, list)
        for item in entries:
            if isinstance(item, dict) and item["index"] == MSR_IA32_TSC:
                item["data"] = Hex(0x123456789)

    changed = document
    for request, change in (
        ("KVM_SET_PIT2", pit),
        ("KVM_SET_SREGS2", sregs2),
        ("KVM_SET_IRQCHIP", irqchip),
        ("KVM_SET_CLOCK", clock),
        ("KVM_SET_MSRS", msrs),
    ):
        changed = _changed(changed, request, change)
    return changed


def test_a_second_run_of_qemu_differs_in_nothing_it_decided(reference: TraceDocument) -> None:
    second = _another_run(reference)
    comparison = compare_documents(reference, second, scenario="tiny-bios")
    assert comparison.differences == []
    left = {(item.call, item.row.struct, item.row.field) for item in comparison.left_out}
    assert left == {
        ("KVM_SET_PIT2", "kvm_pit_channel_state", "count_load_time"),
        ("KVM_SET_SREGS2", "kvm_sregs2", "pdptrs"),
        ("KVM_SET_IRQCHIP", "kvm_irqchip", "pad"),
        ("KVM_SET_IRQCHIP", "kvm_ioapic_state", "pad"),
        ("KVM_SET_CLOCK", "kvm_clock_data", "clock"),
        ("KVM_SET_MSRS", "kvm_msr_entry", "data"),
    }
    result = compare_with_reference(second, reference)
    assert result.deviations == []
    assert {(i.call, i.path) for i in result.left_out} == {
        (i.call, i.path) for i in comparison.left_out
    }
    paths = {item.path for item in comparison.left_out}
    assert "in.entries[0x10].data" in paths  # the TSC MSR by its index, as MSRs compare
    assert "in.channels[1].count_load_time" in paths


def test_the_report_says_how_many_were_left_out_and_why(reference: TraceDocument) -> None:
    left_out = compare_with_reference(_another_run(reference), reference).left_out
    lines = render_left_out(left_out)
    assert lines[0].startswith(f"{len(left_out)} differences left out: not VMM decisions")
    assert any("kvm_pit_channel_state.count_load_time (clock" in line for line in lines)
    assert any("pit_load_count()" in line for line in lines)  # the reason cites the kernel
    assert render_left_out([]) == ["no differences left out as not VMM decisions"]


def test_a_field_the_flags_make_valid_is_compared(reference: TraceDocument) -> None:
    """PDPTRs said valid by KVM_SREGS2_FLAGS_PDPTRS_VALID are the VMM's: a difference counts."""

    def valid(section: dict[str, Value]) -> None:
        section["flags"] = Hex(abi.KVM_SREGS2_FLAGS_PDPTRS_VALID)

    both_valid = _changed(reference, "KVM_SET_SREGS2", valid)

    def other_pdptrs(section: dict[str, Value]) -> None:
        section["pdptrs"] = [Hex(0x1000), Hex(0x2000), Hex(0x3000), Hex(0x4000)]

    changed = _changed(both_valid, "KVM_SET_SREGS2", other_pdptrs)
    found = compare_documents(both_valid, changed, scenario="x").differences
    assert {(d.call_name, d.path) for d in found} == {("KVM_SET_SREGS2", "in.pdptrs")}
    # Valid on one side only: the flags differ (reported), the PDPTRs mean nothing on the other.
    one_valid = compare_documents(reference, changed, scenario="x").differences
    assert {(d.call_name, d.path) for d in one_valid} == {("KVM_SET_SREGS2", "in.flags")}


def test_entries_past_a_count_and_a_deleted_slots_addresses_are_left_out(
    reference: TraceDocument,
) -> None:
    def junk_past_count(section: dict[str, Value]) -> None:
        assert section["nr_xcrs"] == 1
        xcrs = section["xcrs"]
        assert isinstance(xcrs, list) and isinstance(xcrs[5], dict)
        xcrs[5]["value"] = Hex(0xFFFF)

    def deleted_elsewhere(section: dict[str, Value]) -> None:
        if section["memory_size"] == 0:
            section["guest_phys_addr"] = Hex(0x1000)

    changed = _changed(
        _changed(reference, "KVM_SET_XCRS", junk_past_count),
        "KVM_SET_USER_MEMORY_REGION",
        deleted_elsewhere,
    )
    comparison = compare_documents(reference, changed, scenario="x")
    assert comparison.differences == []
    assert {item.path for item in comparison.left_out} == {"in.xcrs[5]", "in.guest_phys_addr"}

    def first_xcr(section: dict[str, Value]) -> None:
        xcrs = section["xcrs"]
        assert isinstance(xcrs, list) and isinstance(xcrs[0], dict)
        xcrs[0]["value"] = Hex(0x7)

    [difference, *_] = compare_documents(
        reference, _changed(reference, "KVM_SET_XCRS", first_xcr), scenario="x"
    ).differences
    assert difference.path == "in.xcrs[0].value"


def test_xsave_registers_count_only_where_xstate_bv_loads_them(reference: TraceDocument) -> None:
    """QEMU's reset XSAVE area has XSTATE_BV 0: the kernel loads init state whatever FCW
    says. With the x87 bit set, FCW is the VMM's."""

    def area(xstate_bv: int, fcw: int) -> Callable[[dict[str, Value]], None]:
        def change(section: dict[str, Value]) -> None:
            decoded = register_pages.decode_normalized("kvm_xsave", section)
            region = decoded["region"]
            assert isinstance(region, dict)
            section.clear()
            section.update(decoded)
            section["region"] = {**region, "xstate_bv": Hex(xstate_bv), "fcw": Hex(fcw)}

        return change

    init_state = _changed(reference, "KVM_SET_XSAVE", area(0, 0x37F))
    other_fcw = _changed(reference, "KVM_SET_XSAVE", area(0, 0x27F))
    assert compare_documents(init_state, other_fcw, scenario="x").differences == []
    loaded, loaded_other = (
        _changed(reference, "KVM_SET_XSAVE", area(1, fcw)) for fcw in (0x37F, 0x27F)
    )
    found = compare_documents(loaded, loaded_other, scenario="x").differences
    assert {(d.call_name, d.path) for d in found} == {("KVM_SET_XSAVE", "in.region.fcw")}


def _struct_fields(name: str) -> set[str]:
    kind = getattr(abi, name)
    found: set[str] = set()
    for field, member, *_ in kind._fields_:
        if field in getattr(kind, "_anonymous_", ()):
            found |= _struct_fields(member.__name__)
        found.add(field)
    return found


def test_every_row_names_a_real_field() -> None:
    page_fields = {
        register_pages.LAPIC_PAGE: {name for _, name, _ in register_pages.LAPIC_REGISTERS}
        | {"reserved"},
        register_pages.XSAVE_AREA: {*register_pages.XSAVE_FIELDS, "reserved", "extended"},
    }
    for row in ROWS:
        fields = page_fields.get(row.struct) or _struct_fields(row.struct)
        assert row.field in fields, f"{row.struct}.{row.field}"
        assert row.reason and row.why in Why


def test_every_row_is_reachable_from_an_ioctl() -> None:
    """A row no ioctl's argument can hold would never apply: a typo or a dead row."""
    reachable: set[str] = set()

    def visit(kind: object) -> None:
        if isinstance(kind, type) and issubclass(kind, ctypes.Array):
            visit(kind._type_)
        elif isinstance(kind, type) and issubclass(kind, ctypes.Structure | ctypes.Union):
            if kind.__name__ in reachable:
                return
            reachable.add(kind.__name__)
            for field, member, *_ in kind._fields_:
                page = register_pages.DECODED_FIELDS.get((kind.__name__, field))
                if page is not None:
                    reachable.add(page)
                visit(member)

    for spec in IOCTLS.values():
        visit(spec.struct)
    assert {row.struct for row in ROWS} <= reachable


def test_calls_without_rows_are_compared_as_they_are() -> None:
    call = TraceCall({"call": "ioctl", "fd": "vcpu0", "req": "KVM_RUN", "exit": {"port": 1}})
    assert decisions.decide(call, call) == decisions.Decided(call, call, [])


def test_the_pytest_plugins_session_leaves_them_out_and_says_so_with_v(
    reference: TraceDocument, tmp_path: Path
) -> None:
    session = SnapshotSession(tmp_path, update=True, color=False)
    session.assert_matches("qemu", reference)
    checking = SnapshotSession(tmp_path, update=False, color=False)
    second = _another_run(reference)
    checking.assert_matches("qemu", second)  # raises on a difference
    quiet = checking.summary_lines(complete_run=False)
    assert quiet == ["1 compared, 0 differing"]
    verbose = checking.summary_lines(complete_run=False, verbose=True)
    left_out = compare_documents(reference, second, scenario="qemu").left_out
    assert verbose[1:] == render_left_out(left_out) and len(left_out) > 1
