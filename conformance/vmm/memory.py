"""Guest memory: host mappings registered as KVM memory slots, with gpa <-> hva translation.

Two ways to get the host memory behind a slot:

- ANONYMOUS: one private anonymous read-write mmap of exactly the slot's size, as the article's
  first program does.
- QEMU: what QEMU 7.2's qemu_ram_mmap does for anonymous RAM. It reserves size + alignment bytes
  PROT_NONE, maps the RAM read-write with MAP_FIXED at the first aligned address inside the
  reservation, then gives back the unused head and all of the tail but one page, which stays
  PROT_NONE as a guard against overruns. The reservation is one alignment larger than the RAM
  because an aligned start lies at most (alignment - 1 page) into any range; the alignment is
  QEMU_VMALLOC_ALIGN, 512 host pages = 2 MiB on x86-64, so that THP can back the RAM with huge
  pages from its first byte. For 1 GiB of RAM: 1073741824 + 2097152 = 1075838976 bytes, the
  figure in QEMU's strace.
"""

from __future__ import annotations

import ctypes
import enum
from contextlib import ExitStack
from dataclasses import dataclass

from conformance.abi import _generated as abi
from conformance.model.errors import GuestMemoryError
from conformance.vmm import _sys
from conformance.vmm._closing import Closing
from conformance.vmm.vm import Vm

QEMU_RAM_ALIGNMENT = 512 * _sys.PAGE_SIZE


class MemoryLayout(enum.Enum):
    ANONYMOUS = "anonymous"
    QEMU = "qemu"


@dataclass(frozen=True)
class MemorySlot:
    """One registered KVM memory slot and the host memory behind it."""

    slot: int
    guest_phys_addr: int
    size: int
    host_address: int
    read_only: bool

    def contains(self, gpa: int, length: int) -> bool:
        return self.guest_phys_addr <= gpa and gpa + length <= self.guest_phys_addr + self.size


@dataclass(frozen=True)
class _HostMapping:
    """A host range to unmap on close; `address` is where the guest memory starts."""

    address: int
    size: int


class GuestMemory(Closing):
    """The guest-physical address space of one VM, slot by slot; unmaps it all on close.

    Close it before or after the Vm: KVM does not pin the memory, it only stops backing the
    slots once the mapping is gone.
    """

    def __init__(self, vm: Vm) -> None:
        self._vm = vm
        self._slots: list[MemorySlot] = []
        self._mappings: list[_HostMapping] = []

    @property
    def slots(self) -> tuple[MemorySlot, ...]:
        return tuple(self._slots)

    def register(
        self,
        slot: int,
        gpa: int,
        size: int,
        *,
        layout: MemoryLayout = MemoryLayout.ANONYMOUS,
        read_only: bool = False,
    ) -> MemorySlot:
        """Map `size` bytes of host memory and make them guest-physical [gpa, gpa + size).

        Issues KVM_SET_USER_MEMORY_REGION; read-only slots (KVM_MEM_READONLY) turn guest writes
        into MMIO exits, as ROM does.
        """
        if size <= 0 or size % _sys.PAGE_SIZE:
            raise GuestMemoryError(f"slot size {size:#x} is not a positive number of pages")
        with ExitStack() as on_failure:
            mapping = _map_qemu_style(size) if layout is MemoryLayout.QEMU else _map_plain(size)
            on_failure.callback(_sys.unmap, mapping.address, mapping.size)
            flags = abi.KVM_MEM_READONLY if read_only else 0
            self._vm.set_user_memory_region(slot, gpa, size, mapping.address, flags)
            on_failure.pop_all()
        self._mappings.append(mapping)
        registered = MemorySlot(slot, gpa, size, mapping.address, read_only)
        self._slots.append(registered)
        return registered

    def hva(self, gpa: int, length: int = 1) -> int:
        """The host address of guest-physical `gpa`; [gpa, gpa + length) must be in one slot."""
        slot = self._slot_of(gpa, length)
        return slot.host_address + (gpa - slot.guest_phys_addr)

    def gpa(self, hva: int) -> int:
        """The guest-physical address host address `hva` backs."""
        for slot in self._slots:
            if slot.host_address <= hva < slot.host_address + slot.size:
                return slot.guest_phys_addr + (hva - slot.host_address)
        raise GuestMemoryError(f"host address {hva:#x} backs no guest memory")

    def read(self, gpa: int, length: int) -> bytes:
        return ctypes.string_at(self.hva(gpa, length), length)

    def write(self, gpa: int, data: bytes) -> None:
        ctypes.memmove(self.hva(gpa, len(data)), data, len(data))

    def close(self) -> None:
        mappings, self._mappings, self._slots = self._mappings, [], []
        with ExitStack() as cleanup:
            for mapping in mappings:
                cleanup.callback(_sys.unmap, mapping.address, mapping.size)

    def _slot_of(self, gpa: int, length: int) -> MemorySlot:
        if length < 1:
            raise GuestMemoryError(f"an access of {length} bytes at gpa {gpa:#x}")
        for slot in self._slots:
            if slot.contains(gpa, length):
                return slot
        raise GuestMemoryError(
            f"gpa range {gpa:#x}+{length:#x} is not inside one memory slot "
            f"(slots: {', '.join(_describe(slot) for slot in self._slots) or 'none'})"
        )


def _describe(slot: MemorySlot) -> str:
    return f"{slot.slot}: {slot.guest_phys_addr:#x}+{slot.size:#x}"


def _map_plain(size: int) -> _HostMapping:
    return _HostMapping(_sys.map_anonymous(size), size)


def _map_qemu_style(size: int) -> _HostMapping:
    """QEMU's reservation dance (see the module docstring): RAM, then its guard page."""
    alignment = QEMU_RAM_ALIGNMENT
    reservation_size = size + alignment
    reservation = _sys.map_anonymous(reservation_size, readable_writable=False)
    with ExitStack() as on_failure:
        on_failure.callback(_sys.unmap, reservation, reservation_size)
        head = -reservation % alignment
        ram = _sys.map_anonymous(size, at=reservation + head)
        if head:
            _sys.unmap(reservation, head)
        guard_end = ram + size + _sys.PAGE_SIZE
        tail = reservation + reservation_size - guard_end
        if tail:
            _sys.unmap(guard_end, tail)
        on_failure.pop_all()
    return _HostMapping(ram, size + _sys.PAGE_SIZE)
