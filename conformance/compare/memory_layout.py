"""Guest memory as each VMM laid it out, and the differences said in words.

From a trace document: every slot's first registration (KVM_SET_USER_MEMORY_REGION) and the
host mapping behind it (the mmap that made `ramN`, and the reservation it was placed inside,
if any). Comparing two documents slot by slot gives sentences like the seed article's
observation: "slot 0: QEMU reserves 1075838976 bytes PROT_NONE and maps 1 GiB MAP_FIXED inside
it; subject maps 256 KiB directly".
"""

from __future__ import annotations

from dataclasses import dataclass

from conformance.model.document import Entry, TraceDocument, Value

_UNITS = ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB"))


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
            f"reserves {int(self.reservation)} bytes {prot} and maps {size_text(self.length)}"
            f"{fixed} inside it"
        )


@dataclass(frozen=True, slots=True)
class Slot:
    number: int
    guest_phys_addr: int
    memory_size: int
    flags: tuple[str, ...]
    backing: Backing | None


def size_text(size: int) -> str:
    """1 GiB, 256 KiB; a size that is no whole unit in bytes."""
    for unit, name in _UNITS:
        if size >= unit and size % unit == 0:
            return f"{size // unit} {name}"
    return f"{size} bytes"


def slots(document: TraceDocument) -> dict[int, Slot]:
    """Each slot's first registration with a non-zero size, across all threads."""
    mappings = _mappings(document)
    found: dict[int, Slot] = {}
    for located in document.calls():
        entry = located.entry
        if not str(entry.get("req", "")).startswith("KVM_SET_USER_MEMORY_REGION"):
            continue
        fields = entry.get("in")
        if not isinstance(fields, dict):
            continue
        number, size = fields.get("slot"), fields.get("memory_size")
        if not isinstance(number, int) or not isinstance(size, int) or size == 0:
            continue
        if number in found:
            continue
        address = fields.get("userspace_addr")
        flags = fields.get("flags")
        found[number] = Slot(
            number,
            _int(fields.get("guest_phys_addr")),
            size,
            tuple(str(flag) for flag in flags) if isinstance(flags, list) else (),
            _backing(mappings, address),
        )
    return found


def layout_differences(subject: TraceDocument, reference: TraceDocument) -> list[str]:
    """Sentences for each slot the two documents lay out differently (QEMU's side first)."""
    theirs, ours = slots(reference), slots(subject)
    sentences = []
    for number in sorted(ours):
        mine = ours[number]
        other = theirs.get(number)
        if other is None:
            sentences.append(
                f"slot {number}: QEMU does not register it; subject registers "
                f"{size_text(mine.memory_size)} at gpa {mine.guest_phys_addr:#x}"
            )
            continue
        if (other.guest_phys_addr, other.memory_size) != (mine.guest_phys_addr, mine.memory_size):
            sentences.append(
                f"slot {number}: QEMU registers {size_text(other.memory_size)} at gpa "
                f"{other.guest_phys_addr:#x}; subject registers {size_text(mine.memory_size)} "
                f"at gpa {mine.guest_phys_addr:#x}"
            )
        backing = _backing_sentence(other.backing, mine.backing)
        if backing is not None:
            sentences.append(f"slot {number}: {backing}")
        for other_number, other_slot in sorted(ours.items()):
            if other_number > number and _overlap(mine, other_slot):
                sentences.append(
                    f"slot {number} [{mine.guest_phys_addr:#x}, "
                    f"{mine.guest_phys_addr + mine.memory_size:#x}) and slot {other_number} "
                    f"[{other_slot.guest_phys_addr:#x}, "
                    f"{other_slot.guest_phys_addr + other_slot.memory_size:#x}) overlap "
                    "in the subject"
                )
    return sentences


def _backing_sentence(theirs: Backing | None, ours: Backing | None) -> str | None:
    if theirs is None or ours is None:
        return None
    reserved_differently = (theirs.reservation is None) != (ours.reservation is None)
    if not reserved_differently and theirs.length == ours.length:
        return None
    return f"QEMU {theirs.describe()}; subject {ours.describe()}"


def _overlap(first: Slot, second: Slot) -> bool:
    return (
        first.guest_phys_addr < second.guest_phys_addr + second.memory_size
        and second.guest_phys_addr < first.guest_phys_addr + first.memory_size
    )


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
            reservation = _int(parent.get("len"))
            reservation_prot = tuple(str(prot) for prot in _list(parent.get("prot")))
    return Backing(_int(mapping.get("len")), flags, reservation, reservation_prot or ())


def _list(value: Value | None) -> list[Value]:
    return value if isinstance(value, list) else []


def _int(value: Value | None) -> int:
    return value if isinstance(value, int) else 0
