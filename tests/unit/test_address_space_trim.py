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


_PAGE = 0x1000


def test_a_reservation_remapped_over_and_over_is_one_mapping_deep() -> None:
    """MAP_FIXED exactly over the previous mapping replaces it (it nested 1,500 deep before,
    and naming recursed through the chain)."""
    space = AddressSpace()
    reservation = _mapping(0x100000000, 0x40200000)
    space.add(reservation)
    latest = None
    for _ in range(1500):
        latest = _mapping(0x100000000, 0x40000000)
        space.add(latest)
    assert latest is not None and latest.parent is reservation
    assert space.innermost(0x100001000) is latest
    assert len(reservation.children) == 1
    latest.mark_relevant()
    assert reservation.relevant


def test_100000_mappings_inside_one_reservation() -> None:
    """A balloon or dirty-tracking VMM maps and unmaps guest pages one by one."""
    count = 100_000
    space = AddressSpace()
    base = 0x7F0000000000
    reservation = _mapping(base, (count + 1) * _PAGE)
    space.add(reservation)
    pages = [_mapping(base + index * _PAGE, _PAGE) for index in range(count)]
    for page in reversed(pages):  # mmap hands out addresses top down
        space.add(page)
    assert len(reservation.children) == count
    assert all(space.innermost(page.start + 8) is page for page in pages)
    for page in pages[::2]:
        space.remove(page.start, _PAGE)
    assert all(not page.alive for page in pages[::2])
    assert all(space.innermost(page.start) is page for page in pages[1::2])
    assert space.innermost(pages[0].start) is None  # the reservation's front is given back
    assert space.innermost(pages[2].start) is reservation  # a hole: the reservation's again
    remapped = _mapping(base, count * _PAGE)  # one MAP_FIXED over all of them
    space.add(remapped)
    assert all(not page.alive for page in pages)
    assert space.innermost(base + _PAGE) is remapped and len(reservation.children) == 0


def test_a_fork_copies_100000_nested_mappings() -> None:
    space = AddressSpace()
    outer = _mapping(0x10000000, 0x10000000)
    space.add(outer)
    for index in range(100_000):
        space.add(_mapping(0x10000000 + index * _PAGE, _PAGE))
    copy = space.fork_copy()
    found = copy.innermost(0x10000000 + 777 * _PAGE)
    assert found is not None and isinstance(found.origin, HostMapping)
    assert found.origin.start == 0x10000000 + 777 * _PAGE
    found.mark_relevant()
    assert found.origin.relevant and outer.relevant
