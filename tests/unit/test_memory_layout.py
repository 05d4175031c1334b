"""Memory layout from the whole slot history: QEMU's delete and re-register of slot 0, flag
changes, moves, teardown, and overlaps only between slots live at the same time."""

from __future__ import annotations

from pathlib import Path

import pytest

from conformance.compare.memory_layout import Change, layout_differences, memory_layout
from conformance.model.document import Entry, Hex, TraceCall, TraceDocument, Value
from conformance.snapshot.store import read_document

REFERENCES = Path(__file__).parents[2] / "traces" / "qemu"


@pytest.mark.parametrize("name", ["setup", "memory-1g", "tiny-bios"])
def test_a_reference_against_itself_says_nothing(name: str) -> None:
    reference = read_document(REFERENCES / f"{name}.yaml")
    assert layout_differences(reference, reference) == []


def test_qemus_slot_0_is_registered_deleted_and_registered_again() -> None:
    layout = memory_layout(read_document(REFERENCES / "memory-1g.yaml"))
    history = layout.history["slot 0"]
    assert [change.kind for change in history] == [Change.REGISTER, Change.DELETE, Change.REGISTER]
    assert [c.slot.memory_size for c in history] == [0x40000000, 0, 0xC0000]
    final = {name: (slot.guest_phys_addr, slot.end) for name, slot in layout.final.items()}
    assert final == {
        "slot 0": (0x0, 0xC0000),
        "slot 1": (0xFFFC0000, 0x100000000),
        "slot 2": (0xC0000, 0xE0000),
        "slot 3": (0xE0000, 0x100000),
        "slot 4": (0x100000, 0x40000000),
    }
    assert layout.overlaps == []  # slots 2-4 came after slot 0 was deleted


def _region(
    slot: int,
    gpa: int,
    size: int,
    flags: list[Value] | None = None,
    *,
    host: int | None = None,
    errno: str | None = None,
) -> Entry:
    fields: Entry = {
        "slot": slot, "flags": flags or [], "guest_phys_addr": Hex(gpa),
        "memory_size": Hex(size), "userspace_addr": f"ram0+{gpa if host is None else host:#x}",
    }  # fmt: skip
    entry: Entry = {"call": "ioctl", "fd": "vm", "req": "KVM_SET_USER_MEMORY_REGION", "in": fields}
    return entry if errno is None else {**entry, "errno": errno}


def _document(*calls: Entry) -> TraceDocument:
    mmap: Entry = {"call": "mmap", "len": Hex(1 << 30), "prot": ["PROT_READ", "PROT_WRITE"],
                   "flags": ["MAP_PRIVATE", "MAP_ANONYMOUS"], "ret": "ram0"}  # fmt: skip
    return TraceDocument({"tool": "vmm"}, {"main": [TraceCall(c) for c in (mmap, *calls)]})


def test_overlaps_are_found_between_live_slots_and_refused_requests() -> None:
    layout = memory_layout(
        _document(
            _region(0, 0, 0x100000),
            _region(1, 0x80000, 0x10000, errno="EEXIST"),  # KVM refused: slot 0 holds it
            _region(0, 0, 0),
            _region(2, 0x80000, 0x10000),  # slot 0 is gone: no overlap
        )
    )
    assert layout.overlaps == [
        "slot 0 [0x0, 0x100000) and slot 1 [0x80000, 0x90000) overlap in the subject "
        "(KVM refused slot 1: EEXIST)"
    ]
    assert set(layout.final) == {"slot 2"}


def test_flag_changes_moves_and_teardown_are_part_of_the_history() -> None:
    subject = _document(
        _region(0, 0, 0x100000),
        _region(0, 0, 0x100000, ["KVM_MEM_LOG_DIRTY_PAGES"]),
        _region(0, 0, 0x100000),
        _region(0, 0x200000, 0x100000, host=0),  # the same memory at another gpa: a move
        _region(0, 0, 0),  # teardown: the last thing the thread does to its slots
    )
    layout = memory_layout(subject)
    kinds = [change.kind for change in layout.history["slot 0"]]
    assert kinds == [Change.REGISTER, Change.FLAGS, Change.FLAGS, Change.MOVE, Change.DELETE]
    final = layout.final["slot 0"]
    assert (final.guest_phys_addr, final.flags) == (0x200000, ())  # before the teardown
    [sentence] = layout_differences(subject, _document(_region(0, 0, 0x100000)))
    assert sentence == (
        "slot 0: QEMU registers 1 MiB at gpa 0x0; subject registers 1 MiB at gpa 0x0, "
        "sets its flags to [KVM_MEM_LOG_DIRTY_PAGES], sets its flags to [], "
        "moves it to gpa 0x200000, then deletes it"
    )
