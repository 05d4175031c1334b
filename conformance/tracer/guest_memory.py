"""The guest memory a VM starts from: a digest of its non-zero pages at its first KVM_RUN.

Two traces compare KVM_RUN exits only when they ran the same guest (compare/guest_images.py):
the same bytes at the same guest-physical addresses. At a VM's first KVM_RUN entry (the vCPU
is stopped before the guest runs a single instruction) every live slot's host memory is read
and each non-zero 4 KiB page is hashed with its address (address space, gpa). Zero pages are
left out, so that 128 MiB of untouched RAM and 256 KiB of it hash alike.

Reading all of a large guest would cost a copy of it and, for memory the VMM never touched,
fault the zero page in behind the VMM's back. /proc/TID/pagemap says which pages are present:
in private anonymous memory (what VMMs allocate RAM with) a page that is neither present nor
swapped out reads as zero and is skipped unread; any other mapping (a file, shared memory) is
read whole. This module is the adapter for /proc/TID/maps and /proc/TID/pagemap.

When KVM_RUN stops at its entry (the loop, Python) the digest is taken there. When it does not
(the eBPF recorder, whose records are read after the guest ran: a long-mode guest sets its
page tables' accessed and dirty bits), the recorder stops the VM's first KVM_RUN before the
guest runs (bpf_run_exits.py) and the digest is taken at that stop (take), to be given to the
VM's first KVM_RUN event when that is decoded (for_first_run).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator

from conformance.model.events import GuestMemoryDigest
from conformance.model.fd_roles import KvmObject
from conformance.tracer import tracee_memory
from conformance.tracer.errors import MemoryReadError

PAGE_SIZE = 4096
_ZERO_PAGE = bytes(PAGE_SIZE)
_READ_CHUNK = 1 << 20  # bytes per process_vm_readv
_PAGEMAP_ENTRY = struct.Struct("<Q")
_PRESENT = 1 << 63
_SWAPPED = 1 << 62
_PAGE_ADDRESS = struct.Struct(
    "<HQ"
)  # address space id, gpa: what each hashed page is prefixed with


def to_digest(vm: KvmObject) -> bool:
    """Whether `vm`'s memory is still to be digested: not done yet, and it has some."""
    return not vm.memory_digested and bool(vm.slots)


def take(tid: int, vm: KvmObject) -> None:
    """Digest `vm`'s memory now, as task `tid` sees it, unless that was done: the VM's guest
    has not run yet. Kept on the VM for its first KVM_RUN event."""
    if not vm.memory_digested:
        vm.memory_digested = True
        vm.memory_digest = digest(tid, vm)


def for_first_run(tid: int, vm: KvmObject) -> GuestMemoryDigest | None:
    """At a KVM_RUN's entry: the digest for the event when it is the VM's first, taken now
    (the call is stopped before the guest runs) unless it was taken before; None after."""
    take(tid, vm)
    found, vm.memory_digest = vm.memory_digest, None
    return found


def digest(tid: int, vm: KvmObject) -> GuestMemoryDigest | None:
    """The digest of `vm`'s live slots as task `tid` (a thread of the VMM) sees its memory;
    None when some of it cannot be read (a slot pointing at memory that is not mapped), or no
    slot was seen registered (there is no guest memory to say anything of)."""
    if not vm.slots:
        return None
    import hashlib  # noqa: PLC0415 - only once a VM runs: ~3 ms of every trace's start-up

    try:
        anonymous = _private_anonymous_ranges(tid)
        hashed = hashlib.sha256()
        pages = 0
        slots = sorted(vm.slots.items(), key=lambda item: (item[0] >> 16, item[1][0]))
        for slot, (gpa, size, host) in slots:
            for offset, page in _non_zero_pages(tid, host, size, anonymous):
                hashed.update(_PAGE_ADDRESS.pack(slot >> 16, gpa + offset))
                hashed.update(page)
                pages += 1
    except (OSError, MemoryReadError):
        return None
    return GuestMemoryDigest(vm.role, pages, hashed.hexdigest())


def _non_zero_pages(
    tid: int, host: int, size: int, anonymous: list[tuple[int, int]]
) -> Iterator[tuple[int, bytes]]:
    """(offset in the slot, page) for each page of [host, host + size) that is not all zero."""
    for start, length in _ranges_to_read(tid, host, size, anonymous):
        for chunk_start in range(start, start + length, _READ_CHUNK):
            chunk_length = min(_READ_CHUNK, start + length - chunk_start)
            data = tracee_memory.read_memory(tid, chunk_start, chunk_length)
            view = memoryview(data)
            for page_offset in range(0, chunk_length, PAGE_SIZE):
                page = view[page_offset : page_offset + PAGE_SIZE]
                if page != _ZERO_PAGE:
                    yield chunk_start + page_offset - host, bytes(page)


def _ranges_to_read(
    tid: int, host: int, size: int, anonymous: list[tuple[int, int]]
) -> Iterator[tuple[int, int]]:
    """The runs of [host, host + size) whose pages may hold something: all of it, except the
    pages of private anonymous memory that were never touched."""
    end = host + size
    position = host
    for area_start, area_end in anonymous:
        if area_end <= position or area_start >= end:
            continue
        if area_start > position:
            yield position, area_start - position  # not private anonymous: read it all
        run_start, run_end = max(area_start, position), min(area_end, end)
        yield from _touched_runs(tid, run_start, run_end)
        position = run_end
    if position < end:
        yield position, end - position


def _touched_runs(tid: int, start: int, end: int) -> Iterator[tuple[int, int]]:
    """Runs of pages in [start, end) that are present or swapped out (pagemap)."""
    first = start // PAGE_SIZE
    count = (end - start) // PAGE_SIZE
    fd = os.open(f"/proc/{tid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        entries = os.pread(fd, count * _PAGEMAP_ENTRY.size, first * _PAGEMAP_ENTRY.size)
    finally:
        os.close(fd)
    run_start = None
    for index, (entry,) in enumerate(_PAGEMAP_ENTRY.iter_unpack(entries)):
        touched = bool(entry & (_PRESENT | _SWAPPED))
        if touched and run_start is None:
            run_start = index
        elif not touched and run_start is not None:
            yield start + run_start * PAGE_SIZE, (index - run_start) * PAGE_SIZE
            run_start = None
    if run_start is not None:
        yield start + run_start * PAGE_SIZE, (count - run_start) * PAGE_SIZE


def _private_anonymous_ranges(tid: int) -> list[tuple[int, int]]:
    """[start, end) of each private mapping with no file behind it (inode 0), by address."""
    ranges = []
    with open(f"/proc/{tid}/maps", encoding="utf-8", errors="replace") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) < 5 or fields[1][3:4] != "p" or fields[4] != "0":
                continue
            name = fields[5].strip() if len(fields) > 5 else ""
            if name in ("[vvar]", "[vdso]", "[vsyscall]"):
                continue
            low, _, high = fields[0].partition("-")
            ranges.append((int(low, 16), int(high, 16)))
    return sorted(ranges)
