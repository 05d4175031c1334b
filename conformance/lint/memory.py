"""Memory slot rules: the guest-physical map and the host memory behind each slot."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from conformance.lint.calls import PAGE_SIZE, calls_in_order, capability_answers, mapping_lengths
from conformance.lint.engine import Hit, Rule, Severity
from conformance.model.calls import address, failed, integer, process_of, request, section
from conformance.model.document import Located, TraceDocument

_SET_REGION = "KVM_SET_USER_MEMORY_REGION"
_SLOT_ID_BITS = 0xFFFF  # the low 16 bits are the slot id, the high 16 the address space id


@dataclass(frozen=True, slots=True)
class _Slot:
    slot: int
    guest_phys_addr: int
    memory_size: int
    mapping: str | None  # None: userspace_addr outside every traced mapping
    offset: int
    registered: Located

    def guest_overlaps(self, other: _Slot) -> bool:
        return (
            self.slot >> 16 == other.slot >> 16
            and self.guest_phys_addr < other.guest_phys_addr + other.memory_size
            and other.guest_phys_addr < self.guest_phys_addr + self.memory_size
        )

    def host_overlaps(self, mapping: str, start: int, length: int) -> bool:
        return (
            self.mapping == mapping
            and self.offset < start + length
            and start < self.offset + self.memory_size
        )

    def moved_from(self, old: _Slot) -> bool:
        """A flags-only update or a move (new guest address, same host memory and size): the
        two changes KVM allows on a live slot (KVM_MR_FLAGS_ONLY, KVM_MR_MOVE)."""
        return (self.mapping, self.offset, self.memory_size) == (
            old.mapping,
            old.offset,
            old.memory_size,
        )


def _slot_from(located: Located) -> _Slot | None:
    arguments = section(located.entry, "in")
    slot = integer(arguments.get("slot"))
    gpa = integer(arguments.get("guest_phys_addr"))
    size = integer(arguments.get("memory_size"))
    if slot is None or gpa is None or size is None:
        return None
    host = address(arguments.get("userspace_addr"))
    mapping, offset = host if host is not None else (None, 0)
    return _Slot(slot, gpa, size, mapping, offset, located)


def _memory_slots(document: TraceDocument) -> Iterator[Hit]:
    lengths = mapping_lengths(document)
    answers = capability_answers(document)
    for role, calls in calls_in_order(document):
        process = process_of(role)
        checker = _SlotChecker(
            role, lengths.get(process, {}), answers.get(process, {}).get("KVM_CAP_NR_MEMSLOTS")
        )
        for located in calls:
            if request(located.entry) == _SET_REGION:
                yield from checker.region(located)
            elif located.entry.get("call") == "munmap":
                checker.unmap(located)
            elif request(located.entry) == "KVM_RUN":
                yield from checker.run(located)


class _SlotChecker:
    """One thread's slots, in the order the thread made its calls."""

    def __init__(self, role: str, lengths: Mapping[str, int], nr_memslots: int | None) -> None:
        self._role = role
        self._lengths = lengths
        self._nr_memslots = nr_memslots
        self._live: dict[int, _Slot] = {}
        self._unmapped: list[tuple[str, int, int, Located]] = []  # mapping, start, length, call
        # munmaps of memory a live slot maps, not yet followed by a KVM_RUN: unmapping guest
        # memory and then deleting the slot (or ending) is a teardown, not a bug.
        self._dangling: list[tuple[_Slot, Located]] = []

    def _hit(self, located: Located, message: str) -> Hit:
        return Hit(self._role, located.index, message)

    def region(self, located: Located) -> Iterator[Hit]:
        new = _slot_from(located)
        if new is None:
            return
        if new.memory_size == 0:
            if not failed(located.entry):
                self._live.pop(new.slot, None)
                self._dangling = [(s, u) for s, u in self._dangling if s.slot != new.slot]
            return
        slot_id = new.slot & _SLOT_ID_BITS
        if self._nr_memslots is not None and slot_id >= self._nr_memslots:
            yield self._hit(
                located,
                f"slot {slot_id} is not below KVM_CAP_NR_MEMSLOTS ({self._nr_memslots})",
            )
        yield from self._host_memory(located, new)
        old = self._live.get(new.slot)
        if old is not None and not new.moved_from(old):
            yield self._hit(
                located,
                f"slot {slot_id} is reused without deleting it first (memory_size 0): it is "
                f"live since {self._role}[{old.registered.index}] with other host memory or size",
            )
        for other in self._live.values():
            if other.slot != new.slot and new.guest_overlaps(other):
                yield self._hit(
                    located,
                    f"slot {slot_id} [{new.guest_phys_addr:#x}, "
                    f"{new.guest_phys_addr + new.memory_size:#x}) overlaps slot "
                    f"{other.slot & _SLOT_ID_BITS} [{other.guest_phys_addr:#x}, "
                    f"{other.guest_phys_addr + other.memory_size:#x})",
                )
        if not failed(located.entry):
            self._live[new.slot] = new

    def _host_memory(self, located: Located, new: _Slot) -> Iterator[Hit]:
        if new.mapping is None:
            return  # heap or static memory the trace does not follow: nothing to judge by
        where = f"{new.mapping}+{new.offset:#x}"
        if new.offset % PAGE_SIZE:
            yield self._hit(located, f"userspace_addr {where} is not page-aligned")
        length = self._lengths.get(new.mapping)
        if length is not None and new.offset + new.memory_size > length:
            yield self._hit(
                located,
                f"userspace_addr {where} + memory_size {new.memory_size:#x} runs past the end "
                f"of mapping {new.mapping} ({length:#x} bytes)",
            )
        for mapping, start, size, unmap in self._unmapped:
            if new.host_overlaps(mapping, start, size):
                yield self._hit(
                    located,
                    f"userspace_addr {where} points into memory unmapped at "
                    f"{self._role}[{unmap.index}]",
                )

    def unmap(self, located: Located) -> None:
        target = address(located.entry.get("addr"))
        length = integer(located.entry.get("len"))
        if target is None or length is None:
            return
        mapping, start = target
        self._unmapped.append((mapping, start, length, located))
        for slot in self._live.values():
            if slot.host_overlaps(mapping, start, length):
                self._dangling.append((slot, located))

    def run(self, located: Located) -> Iterator[Hit]:
        for slot, unmap in self._dangling:
            yield self._hit(
                unmap,
                f"munmap of {unmap.entry.get('addr')} (length {unmap.entry.get('len')!r}) while "
                f"slot {slot.slot & _SLOT_ID_BITS} ({self._role}[{slot.registered.index}]) still "
                f"maps it, then {self._role}[{located.index}] KVM_RUN runs the guest on it",
            )
        self._dangling = []


RULES = (
    Rule(
        id="KVMC005",
        name="InconsistentMemorySlot",
        title="Memory slot overlapping, reused, out of range, or not backed by live host memory",
        severity=Severity.ERROR,
        incidents=("firecracker-microvm/firecracker#567", "cloud-hypervisor/cloud-hypervisor#6842"),
        rationale=(
            "KVM_SET_USER_MEMORY_REGION checks little of the host side: it accepts a slot whose "
            "userspace_addr range runs past the mapping behind it, and nothing stops a VMM from "
            "unmapping memory a live slot still maps (the guest then faults, or reads whatever "
            "is mapped there next). It refuses overlapping guest ranges, a live slot changed in "
            "size or host address, a slot id not below KVM_CAP_NR_MEMSLOTS and an unaligned "
            "userspace_addr; a VMM that makes these requests has lost track of its slots. A "
            "slot is changed in place only by a flags-only update or a move; anything else is "
            "a delete (memory_size 0) and a new registration. userspace_addr outside every "
            "traced mapping (heap, static memory) is not judged."
        ),
        check=_memory_slots,
    ),
)
