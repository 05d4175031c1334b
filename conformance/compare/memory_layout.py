"""Guest memory as each VMM laid it out, from the whole slot history, and the differences said
in words.

A slot's history is every KVM_SET_USER_MEMORY_REGION on it, in its thread's order: the first
registration, a delete (memory_size 0), a registration again, a flags-only change (dirty
logging on or off), a move. QEMU, for one, registers its RAM as one slot, then deletes it and
registers it again in pieces around the BIOS hole at 0xc0000-0x100000. The layout the guest
gets is the live slots at the end, a teardown aside (deletes that end a thread's slot changes);
each slot's host memory is the mapping behind it (the mmap that made `ramN`, and the reservation
it was placed inside, if any).

Comparing a subject with QEMU's reference, slot by slot (the slots the subject registers):
- the histories, where they differ: "slot 0: QEMU registers 1 GiB at gpa 0x0, deletes it, then
  registers 768 KiB at gpa 0x0; subject registers 256 KiB at gpa 0x0";
- the host memory behind the final slot: "slot 0: QEMU reserves 1026 MiB PROT_NONE and
  maps 1 GiB MAP_FIXED inside it; subject maps 256 KiB directly";
- two of the subject's slots whose guest ranges overlap while both are live, or a registration
  that asks for a range a live slot holds (KVM refuses it with EEXIST).

Calls of different threads have no recorded order (docs/trace-format.md): a history is built
thread by thread, in thread role order.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass

from conformance.model.calls import integer, process_of, request, section
from conformance.model.document import Entry, Located, TraceDocument, Value

_UNITS = ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB"))
_SET_REGION = "KVM_SET_USER_MEMORY_REGION"
_SLOT_ID_BITS = 0xFFFF  # low 16 bits: the slot; high 16: the address space (SMM on x86)


@dataclass(frozen=True, slots=True)
class Backing:
    """The host memory behind a slot."""

    length: int
    flags: tuple[str, ...]
    reservation: int | None  # bytes of the PROT_NONE mapping it sits in, if any
    reservation_prot: tuple[str, ...] = ()

    def describe(self) -> str:
        shown = ", ".join(flag for flag in self.flags if flag not in ("MAP_PRIVATE",))
        if self.reservation is None:
            return f"maps {size_text(self.length)} directly ({shown})"
        prot = "|".join(self.reservation_prot) or "PROT_NONE"
        fixed = " MAP_FIXED" if "MAP_FIXED" in self.flags else ""
        return (
            f"reserves {size_text(self.reservation)} {prot} and maps {size_text(self.length)}"
            f"{fixed} inside it"
        )


@dataclass(frozen=True, slots=True)
class Slot:
    """A slot as one registration left it."""

    number: int  # the slot id as the VMM passed it (address space in the high 16 bits)
    guest_phys_addr: int
    memory_size: int
    flags: tuple[str, ...]
    backing: Backing | None
    host: Value | None = None  # userspace_addr as normalized (`ram0+0x0`)

    @property
    def end(self) -> int:
        return self.guest_phys_addr + self.memory_size

    def range_text(self) -> str:
        return f"[{self.guest_phys_addr:#x}, {self.end:#x})"

    def overlaps(self, other: Slot) -> bool:
        return (
            self.number >> 16 == other.number >> 16
            and self.guest_phys_addr < other.end
            and other.guest_phys_addr < self.end
        )


class Change(enum.Enum):
    REGISTER = "register"  # a slot that was not live
    DELETE = "delete"  # memory_size 0
    FLAGS = "flags"  # the same memory with other flags (KVM_MR_FLAGS_ONLY)
    MOVE = "move"  # the same host memory and size at another gpa (KVM_MR_MOVE)
    REPLACE = "replace"  # anything else on a live slot: KVM refuses it (EINVAL)


@dataclass(frozen=True, slots=True)
class SlotChange:
    """One KVM_SET_USER_MEMORY_REGION in a slot's history."""

    kind: Change
    slot: Slot
    call: Located
    refused: str | None  # the errno, when KVM refused it: the slot did not change

    def describe(self) -> str:
        slot = self.slot
        where = f"{size_text(slot.memory_size)} at gpa {slot.guest_phys_addr:#x}"
        flags = f" [{', '.join(slot.flags)}]" if slot.flags else ""
        text = {
            Change.REGISTER: f"registers {where}{flags}",
            Change.DELETE: "deletes it",
            Change.FLAGS: f"sets its flags to [{', '.join(slot.flags)}]",
            Change.MOVE: f"moves it to gpa {slot.guest_phys_addr:#x}",
            Change.REPLACE: f"registers {where}{flags} over it",
        }[self.kind]
        return f"{text} (refused: {self.refused})" if self.refused else text


@dataclass(slots=True)
class MemoryLayout:
    """A document's slots: each slot's history, and the layout they leave."""

    history: dict[str, list[SlotChange]]  # by slot name ("slot 0", "vm2 slot 1")
    final: dict[str, Slot]  # the live slots at the end, a teardown aside
    overlaps: list[str]  # sentences for overlapping live slots and refused overlaps


def size_text(size: int) -> str:
    """1 GiB, 256 KiB; a size that is no whole unit in bytes, in hex as sizes are everywhere."""
    for unit, name in _UNITS:
        if size >= unit and size % unit == 0:
            return f"{size // unit} {name}"
    return f"{size:#x} bytes"


def memory_layout(document: TraceDocument) -> MemoryLayout:
    mappings = _mappings(document)
    layout = MemoryLayout({}, {}, [])
    for role in document.sorted_roles():
        live: dict[str, Slot] = {}
        changes: list[tuple[str, SlotChange]] = []
        for located in document.calls(role):
            slot = _slot_from(located.entry, mappings)
            if slot is None:
                continue
            name = _slot_name(process_of(role), str(located.entry.get("fd", "")), slot.number)
            change = _change(live.get(name), slot, located)
            layout.overlaps.extend(_overlap_sentences(name, change, live))
            _apply(live, name, change)
            changes.append((name, change))
            layout.history.setdefault(name, []).append(change)
        final: dict[str, Slot] = {}
        for name, change in changes[: len(changes) - _teardown(changes)]:
            _apply(final, name, change)
        layout.final.update(final)
    return layout


def _apply(live: dict[str, Slot], name: str, change: SlotChange) -> None:
    if change.refused is not None:
        return  # KVM refused it: the slot stays as it was
    if change.kind is Change.DELETE:
        live.pop(name, None)
    else:
        live[name] = change.slot


def layout_differences(subject: TraceDocument, reference: TraceDocument) -> list[str]:
    """Sentences for each slot the two documents lay out differently (QEMU's side first)."""
    theirs, ours = memory_layout(reference), memory_layout(subject)
    sentences: list[str] = []
    for name in sorted(ours.history, key=_slot_order):
        mine, other = ours.history[name], theirs.history.get(name)
        if other is None:
            sentences.append(f"{name}: QEMU does not register it; subject {_story(mine)}")
            continue
        if _story(mine) != _story(other):
            sentences.append(f"{name}: QEMU {_story(other)}; subject {_story(mine)}")
        final_theirs, final_ours = theirs.final.get(name), ours.final.get(name)
        if final_theirs is not None and final_ours is not None:
            backing = _backing_sentence(final_theirs.backing, final_ours.backing)
            if backing is not None:
                sentences.append(f"{name}: {backing}")
    return sentences + ours.overlaps


def _story(history: list[SlotChange]) -> str:
    """A slot's history as one clause: "registers 1 GiB at gpa 0x0, deletes it, then ..."."""
    parts = [change.describe() for change in history]
    if len(parts) > 1:
        parts[-1] = f"then {parts[-1]}"
    return ", ".join(parts)


def _change(live: Slot | None, new: Slot, located: Located) -> SlotChange:
    refused = located.entry.get("errno")
    refusal = str(refused) if refused is not None else None
    if new.memory_size == 0:
        kind = Change.DELETE
    elif live is None:
        kind = Change.REGISTER
    elif (new.host, new.memory_size, new.guest_phys_addr) == (
        live.host,
        live.memory_size,
        live.guest_phys_addr,
    ):
        kind = Change.FLAGS
    elif (new.host, new.memory_size) == (live.host, live.memory_size):
        kind = Change.MOVE
    else:
        kind = Change.REPLACE
    return SlotChange(kind, new, located, refusal)


def _overlap_sentences(name: str, change: SlotChange, live: dict[str, Slot]) -> Iterator[str]:
    if change.kind is Change.DELETE:
        return
    new = change.slot
    refused = f" (KVM refused {name}: {change.refused})" if change.refused else ""
    for other_name, other in sorted(live.items(), key=lambda item: _slot_order(item[0])):
        if other_name != name and new.overlaps(other):
            first, second = sorted(
                ((other_name, other), (name, new)), key=lambda s: _slot_order(s[0])
            )
            yield (
                f"{first[0]} {first[1].range_text()} and {second[0]} {second[1].range_text()} "
                f"overlap in the subject{refused}"
            )


def _teardown(changes: list[tuple[str, SlotChange]]) -> int:
    """How many deletes end a thread's slot changes: taking the VM apart, not laying it out."""
    count = 0
    for _name, change in reversed(changes):
        if change.kind is not Change.DELETE:
            break
        count += 1
    return count


def _slot_name(process: str, vm: str, number: int) -> str:
    space = number >> 16
    slot = f"slot {number & _SLOT_ID_BITS}" + (f" (address space {space})" if space else "")
    owner = "" if vm in ("vm", "") else f"{vm} "
    return f"{process}{owner}{slot}"


def _slot_order(name: str) -> tuple[str, int]:
    prefix, _, number = name.rpartition("slot ")
    digits = number.split(" ")[0]
    return prefix, int(digits) if digits.isdigit() else 0


def _slot_from(entry: Entry, mappings: dict[str, Entry]) -> Slot | None:
    if not request(entry).startswith(_SET_REGION):
        return None
    fields = section(entry, "in")
    number, size = integer(fields.get("slot")), integer(fields.get("memory_size"))
    if number is None or size is None:
        return None
    flags = fields.get("flags")
    address = fields.get("userspace_addr")
    return Slot(
        number,
        integer(fields.get("guest_phys_addr")) or 0,
        size,
        tuple(str(flag) for flag in flags) if isinstance(flags, list) else (),
        _backing(mappings, address),
        address,
    )


def _backing_sentence(theirs: Backing | None, ours: Backing | None) -> str | None:
    if theirs is None or ours is None:
        return None
    reserved_differently = (theirs.reservation is None) != (ours.reservation is None)
    if not reserved_differently and theirs.length == ours.length:
        return None
    return f"QEMU {theirs.describe()}; subject {ours.describe()}"


def _mappings(document: TraceDocument) -> dict[str, Entry]:
    """mmap calls by the name of the mapping they made."""
    made: dict[str, Entry] = {}
    for located in document.calls():
        name = located.entry.get("ret")
        if located.entry.get("call") == "mmap" and isinstance(name, str):
            made[name] = located.entry
    return made


def _backing(mappings: dict[str, Entry], address: Value | None) -> Backing | None:
    if not isinstance(address, str) or "+" not in address:
        return None
    mapping = mappings.get(address.partition("+")[0])
    if mapping is None:
        return None
    flags = tuple(str(flag) for flag in _list(mapping.get("flags")))
    reservation = reservation_prot = None
    placed = mapping.get("addr")
    if isinstance(placed, str) and "+" in placed:
        parent = mappings.get(placed.partition("+")[0])
        if parent is not None:
            reservation = integer(parent.get("len"))
            reservation_prot = tuple(str(prot) for prot in _list(parent.get("prot")))
    return Backing(integer(mapping.get("len")) or 0, flags, reservation, reservation_prot or ())


def _list(value: Value | None) -> list[Value]:
    return value if isinstance(value, list) else []
