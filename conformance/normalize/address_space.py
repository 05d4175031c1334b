"""A traced process's mappings and eventfds, so host addresses can be named by what they are.

Host addresses change from run to run (ASLR); what a VMM does with them does not. Each mmap the
tracer reports becomes a `HostMapping`; an address a KVM call passes is named by the innermost live
mapping containing it (`ram0+0x1000`). A mapping created inside another one (QEMU's MAP_FIXED
guest RAM inside its PROT_NONE reservation) is that mapping's child, so the reservation is kept
whenever the RAM in it is. Names are given only at the end, once it is known which mappings any
KVM call referenced: only those (and their parents) are kept in the trace.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from conformance.model.document import Hex


@dataclass(eq=False, slots=True)
class NamedResource:
    """Something a trace names only if a KVM call referenced it (a mapping, an eventfd)."""

    kind: str  # the name's stem: "ram", "region", "eventfd"; or the whole name when fixed
    creator: int  # id of the thread state that created it, resolved to a role when naming
    position: int  # how many calls that thread had made before: orders names deterministically
    fixed_name: str | None = None  # names that need no numbering ("kvm_run:vcpu0")
    relevant: bool = False
    name: str | None = None  # given by the normalizer at finish
    origin: NamedResource | None = None  # for a forked child's copy: the parent's original

    def mark_relevant(self) -> None:
        self.relevant = True
        if self.origin is not None:
            self.origin.mark_relevant()

    def resolved_name(self) -> str:
        if self.origin is not None:
            return self.origin.resolved_name()
        if self.name is None:
            raise RuntimeError(f"resource {self.kind} used before naming")  # a normalizer bug
        return self.name


@dataclass(eq=False, slots=True)
class HostMapping(NamedResource):
    start: int = 0
    length: int = 0
    parent: HostMapping | None = None
    children: list[HostMapping] = field(default_factory=list)
    alive: bool = True
    # Bytes munmapped off the front and the back (QEMU trims its over-sized reservations to an
    # alignment): the kernel may map something else there, which this mapping must not claim.
    # Offsets stay relative to `start`, the address the mmap returned.
    trimmed_head: int = 0
    trimmed_tail: int = 0

    @property
    def live_start(self) -> int:
        return self.start + self.trimmed_head

    @property
    def live_end(self) -> int:
        return self.start + self.length - self.trimmed_tail

    def contains(self, address: int) -> bool:
        return self.live_start <= address < self.live_end

    def covers(self, start: int, length: int) -> bool:
        return self.live_start <= start and start + length <= self.live_end

    def trim(self, start: int, length: int) -> None:
        """A munmap that cuts off this mapping's front or back; a hole in the middle is kept."""
        end = start + length
        if start <= self.live_start < end:
            self.trimmed_head = end - self.start
        elif start < self.live_end <= end:
            self.trimmed_tail = self.start + self.length - start

    def mark_relevant(self) -> None:
        NamedResource.mark_relevant(self)
        if self.parent is not None:
            self.parent.mark_relevant()

    def mark_guest_memory(self) -> None:
        """Memory registered with KVM: named `ramN` rather than `regionN`."""
        if self.fixed_name is None:
            self.kind = "ram"
        if self.origin is not None and isinstance(self.origin, HostMapping):
            self.origin.mark_guest_memory()


@dataclass(frozen=True, slots=True)
class AddressRef:
    """An address inside a mapping: rendered `name+0xOFFSET` once the mapping is named."""

    mapping: HostMapping
    offset: int

    def render(self) -> str:
        return f"{self.mapping.resolved_name()}+{Hex(self.offset)!r}"


@dataclass(frozen=True, slots=True)
class ResourceRef:
    """A mapping or eventfd by name (an mmap's result, an eventfd handed to KVM)."""

    resource: NamedResource

    def render(self) -> str:
        return self.resource.resolved_name()


class AddressSpace:
    """The live mappings of one process, top-level ones sorted by start address."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._top: list[HostMapping] = []

    def innermost(self, address: int) -> HostMapping | None:
        index = bisect.bisect_right(self._starts, address) - 1
        if index < 0 or not self._top[index].contains(address):
            return None
        mapping = self._top[index]
        while True:
            child = next((c for c in mapping.children if c.contains(address)), None)
            if child is None:
                return mapping
            mapping = child

    def locate(self, address: int) -> AddressRef | None:
        mapping = self.innermost(address)
        return None if mapping is None else AddressRef(mapping, address - mapping.start)

    def add(self, mapping: HostMapping) -> None:
        """Record a new mapping; inside an existing one it becomes that one's child."""
        container = self.innermost(mapping.start)
        if container is not None and container.covers(mapping.start, mapping.length):
            container.children = [
                child for child in container.children if not _replaced(child, mapping)
            ]
            mapping.parent = container
            container.children.append(mapping)
            return
        # A mapping over addresses where others were replaces them (MAP_FIXED semantics).
        self.remove(mapping.start, mapping.length)
        index = bisect.bisect_left(self._starts, mapping.start)
        self._starts.insert(index, mapping.start)
        self._top.insert(index, mapping)

    def remove(self, start: int, length: int) -> None:
        """munmap: forget every mapping the range covers entirely; cut the front or back off
        one it covers partly (the mapping and its name stay)."""
        keep_top: list[HostMapping] = []
        for mapping in self._top:
            if start <= mapping.live_start and mapping.live_end <= start + length:
                _retire(mapping)
                continue
            if start < mapping.live_end and mapping.live_start < start + length:
                mapping.trim(start, length)
            mapping.children = [
                child for child in mapping.children if not _cut_away(child, start, length)
            ]
            keep_top.append(mapping)
        # Trimming moves live starts; top-level live ranges never overlap, so order is kept.
        self._starts, self._top = [mapping.live_start for mapping in keep_top], keep_top

    def move(self, mapping: HostMapping, new_start: int, new_length: int) -> None:
        """mremap: the same mapping, now elsewhere or another size."""
        if mapping.parent is None and mapping in self._top:
            index = self._top.index(mapping)
            del self._top[index], self._starts[index]
            mapping.start, mapping.length = new_start, new_length
            mapping.trimmed_head = mapping.trimmed_tail = 0
            index = bisect.bisect_left(self._starts, new_start)
            self._starts.insert(index, new_start)
            self._top.insert(index, mapping)
        else:
            mapping.start, mapping.length = new_start, new_length
            mapping.trimmed_head = mapping.trimmed_tail = 0

    def fork_copy(self) -> AddressSpace:
        """A forked child's address space: copies whose references count for the originals."""
        child = AddressSpace()
        for mapping in self._top:
            copy = _copy_tree(mapping, parent=None)
            child._starts.append(copy.live_start)
            child._top.append(copy)
        return child


def _replaced(child: HostMapping, new: HostMapping) -> bool:
    if new.start <= child.start and child.start + child.length <= new.start + new.length:
        _retire(child)
        return True
    return False


def _cut_away(child: HostMapping, start: int, length: int) -> bool:
    if start <= child.start and child.start + child.length <= start + length:
        _retire(child)
        return True
    child.children = [c for c in child.children if not _cut_away(c, start, length)]
    return False


def _retire(mapping: HostMapping) -> None:
    mapping.alive = False
    for child in mapping.children:
        _retire(child)


def _copy_tree(mapping: HostMapping, parent: HostMapping | None) -> HostMapping:
    copy = HostMapping(
        kind=mapping.kind,
        creator=mapping.creator,
        position=mapping.position,
        fixed_name=mapping.fixed_name,
        origin=mapping,
        start=mapping.start,
        length=mapping.length,
        parent=parent,
        trimmed_head=mapping.trimmed_head,
        trimmed_tail=mapping.trimmed_tail,
    )
    copy.children = [_copy_tree(child, copy) for child in mapping.children]
    return copy
