"""A traced process's mappings and eventfds, so host addresses can be named by what they are.

Host addresses change from run to run (ASLR); what a VMM does with them does not. Each mmap the
tracer reports becomes a `HostMapping`; an address a KVM call passes is named by the innermost live
mapping containing it (`ram0+0x1000`). A mapping created inside another one (QEMU's MAP_FIXED
guest RAM inside its PROT_NONE reservation) is that mapping's child, so the reservation is kept
whenever the RAM in it is. Names are given only at the end, once it is known which mappings any
KVM call referenced: only those (and their parents) are kept in the trace.

Each level (the process's top-level mappings, a mapping's children) is a sorted map of
non-overlapping live ranges (sortedcontainers.SortedDict, by live start): finding, adding and
removing a mapping costs O(log n) at each level of nesting, and nothing here recurses, so a VMM
that maps and unmaps guest memory 100,000 times (balloon, hotplug, dirty tracking) or remaps
one reservation over and over costs what its calls cost. A mapping placed exactly over another
replaces it (MAP_FIXED), rather than nesting inside it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from sortedcontainers import SortedDict

from conformance.model.document import Hex


class _Level:
    """Mappings side by side (a process's top level, or one mapping's children): live ranges
    that do not overlap, by live start. The sorted map is made on the first insertion: most
    mappings never have children."""

    __slots__ = ("_by_start",)

    def __init__(self) -> None:
        self._by_start: SortedDict[int, HostMapping] | None = None

    def __iter__(self) -> Iterator[HostMapping]:
        return iter(list(self._by_start.values()) if self._by_start else [])

    def __len__(self) -> int:
        return len(self._by_start) if self._by_start else 0

    def at(self, address: int) -> HostMapping | None:
        """The mapping whose live range holds `address`."""
        if not self._by_start:
            return None
        index = self._by_start.bisect_right(address) - 1
        if index < 0:
            return None
        mapping: HostMapping = self._by_start.peekitem(index)[1]
        return mapping if mapping.contains(address) else None

    def overlapping(self, start: int, end: int) -> list[HostMapping]:
        """The mappings whose live range meets [start, end), in address order."""
        if not self._by_start:
            return []
        found = []
        first = self._by_start.bisect_right(start)
        if first > 0:
            mapping: HostMapping = self._by_start.peekitem(first - 1)[1]
            if mapping.live_end > start:
                found.append(mapping)
        found.extend(self._by_start.values()[first : self._by_start.bisect_left(end)])
        return found

    def insert(self, mapping: HostMapping) -> None:
        if self._by_start is None:
            self._by_start = SortedDict()
        self._by_start[mapping.live_start] = mapping

    def discard(self, mapping: HostMapping) -> None:
        if self._by_start and self._by_start.get(mapping.live_start) is mapping:
            del self._by_start[mapping.live_start]


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
        """This resource, its parents (a mapping's containers) and what it is a fork copy of."""
        pending: list[NamedResource] = [self]
        while pending:
            resource = pending.pop()
            if resource.relevant:
                continue  # whatever it leads to was marked with it
            resource.relevant = True
            if resource.origin is not None:
                pending.append(resource.origin)
            if isinstance(resource, HostMapping) and resource.parent is not None:
                pending.append(resource.parent)

    def original(self) -> NamedResource:
        """The resource a fork copy (of a copy...) stands for; itself when it is no copy."""
        resource = self
        while resource.origin is not None:
            resource = resource.origin
        return resource

    def resolved_name(self) -> str:
        name = self.original().name
        if name is None:
            raise RuntimeError(f"resource {self.kind} used before naming")  # a normalizer bug
        return name


@dataclass(eq=False, slots=True)
class HostMapping(NamedResource):
    start: int = 0
    length: int = 0
    parent: HostMapping | None = None
    children: _Level = field(default_factory=_Level)
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

    def mark_guest_memory(self) -> None:
        """Memory registered with KVM: named `ramN` rather than `regionN`."""
        mapping: NamedResource | None = self
        while isinstance(mapping, HostMapping):
            if mapping.fixed_name is None:
                mapping.kind = "ram"
            mapping = mapping.origin


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
    """The live mappings of one process: a tree of levels, children inside their parents."""

    def __init__(self) -> None:
        self._top = _Level()

    def innermost(self, address: int) -> HostMapping | None:
        found = None
        level = self._top
        while (mapping := level.at(address)) is not None:
            found, level = mapping, mapping.children
        return found

    def locate(self, address: int) -> AddressRef | None:
        mapping = self.innermost(address)
        return None if mapping is None else AddressRef(mapping, address - mapping.start)

    def add(self, mapping: HostMapping) -> None:
        """Record a new mapping: the child of the innermost one holding it with room to spare;
        whatever it lies over is replaced or cut back (MAP_FIXED semantics)."""
        start, end = mapping.start, mapping.start + mapping.length
        container = None
        level = self._top
        while (inner := level.at(start)) is not None and inner.covers(start, mapping.length):
            if (inner.live_start, inner.live_end) == (start, end):
                break  # exactly over it: a replacement, not a child
            container, level = inner, inner.children
        mapping.parent = container
        self._clear(level, start, end, trim=True)
        level.insert(mapping)

    def remove(self, start: int, length: int) -> None:
        """munmap: forget every mapping the range covers entirely; cut the front or back off
        a top-level one it covers partly (the mapping and its name stay)."""
        self._clear(self._top, start, start + length, trim=False)

    def _clear(self, level: _Level, start: int, end: int, *, trim: bool) -> None:
        """Retire what [start, end) covers at `level` and below; cut back what it covers partly
        at `level` when `trim` (a mapping goes in there: levels never overlap) and at the top
        level always (the kernel gave those bytes back)."""
        pending = [(level, True)]
        while pending:
            current, first = pending.pop()
            for mapping in current.overlapping(start, end):
                if start <= mapping.live_start and mapping.live_end <= end:
                    current.discard(mapping)
                    _retire(mapping)
                    continue
                if current is self._top or (first and trim):
                    current.discard(mapping)
                    mapping.trim(start, end - start)
                    current.insert(mapping)
                pending.append((mapping.children, False))

    def move(self, mapping: HostMapping, new_start: int, new_length: int) -> None:
        """mremap: the same mapping, now elsewhere or another size."""
        level = self._top if mapping.parent is None else mapping.parent.children
        level.discard(mapping)
        mapping.start, mapping.length = new_start, new_length
        mapping.trimmed_head = mapping.trimmed_tail = 0
        if mapping.alive:
            level.insert(mapping)

    def fork_copy(self) -> AddressSpace:
        """A forked child's address space: copies whose references count for the originals."""
        child = AddressSpace()
        pending: list[tuple[HostMapping, HostMapping | None, _Level]] = [
            (mapping, None, child._top) for mapping in self._top
        ]
        while pending:
            mapping, parent, level = pending.pop()
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
            level.insert(copy)
            pending.extend((inner, copy, copy.children) for inner in mapping.children)
        return child


def _retire(mapping: HostMapping) -> None:
    """A mapping gone, and everything inside it."""
    pending = [mapping]
    while pending:
        gone = pending.pop()
        gone.alive = False
        pending.extend(gone.children)
