"""A reservation trimmed by munmap no longer claims the addresses it gave back."""

from __future__ import annotations

from conformance.normalize.address_space import AddressSpace, HostMapping


def _mapping(start: int, length: int) -> HostMapping:
    return HostMapping(kind="region", creator=0, position=0, start=start, length=length)


def test_trimmed_front_and_back_are_not_claimed_and_offsets_stay() -> None:
    space = AddressSpace()
    arena = _mapping(0x10000, 0x8000)
    space.add(arena)
    space.remove(0x10000, 0x2000)  # front
    space.remove(0x16000, 0x2000)  # back
    assert space.innermost(0x11000) is None
    assert space.innermost(0x17000) is None
    located = space.locate(0x13000)
    assert located is not None and located.mapping is arena and located.offset == 0x3000


def test_a_mapping_placed_where_a_trimmed_one_was_is_found() -> None:
    space = AddressSpace()
    arena = _mapping(0x100000, 0x80000)
    space.add(arena)
    space.remove(0x100000, 0x20000)
    ram = _mapping(0x20000, 0x100000)  # ends inside the arena's old front
    space.add(ram)
    located = space.locate(0x110000)
    assert located is not None and located.mapping is ram
    located = space.locate(0x130000)
    assert located is not None and located.mapping is arena
