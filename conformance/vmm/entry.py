"""Putting a vCPU into the state a guest image expects at its first instruction.

Three entry modes, as conformance.vmm.guests names them:
- "real": real mode with CS selector 0 and base 0, IP = the entry address.
- "long": 64-bit mode, built by the VMM: a GDT with a 64-bit code segment, and 4-level page
  tables identity-mapping the first 1 GiB with 2 MiB pages, all in guest RAM below.
- "reset-vector": the architectural reset state (CS selector 0xf000, base 0xffff0000, IP 0xfff0),
  written explicitly although a fresh vCPU already holds it: as QEMU does on every reset, the
  VMM states the vCPU's state itself instead of relying on what KVM_CREATE_VCPU left there.
"""

from __future__ import annotations

import struct
from typing import Any

from conformance.model.errors import GuestMemoryError
from conformance.vmm.guests import GuestImage
from conformance.vmm.memory import GuestMemory
from conformance.vmm.vcpu import Vcpu

# RFLAGS bit 1 is reserved and reads as 1; everything else clear, so interrupts stay off.
RFLAGS_RESERVED = 0x2

CR0_PE = 1 << 0
CR0_ET = 1 << 4
CR0_PG = 1 << 31
CR4_PAE = 1 << 5
EFER_LME = 1 << 8
EFER_LMA = 1 << 10

# Where the long-mode scaffolding lives in guest RAM: above the BIOS data area and well above
# any image loaded at 0x1000, below the 256 KiB the guests are given.
GDT_GPA = 0x500
PML4_GPA = 0x10000
PDPT_GPA = 0x11000
PD_GPA = 0x12000
# The stack grows down from here; the guests use none, but a sane RSP costs nothing.
STACK_TOP_GPA = 0x20000

_PAGE_PRESENT = 1 << 0
_PAGE_WRITABLE = 1 << 1
_PAGE_HUGE = 1 << 7  # in a page-directory entry: maps a 2 MiB page directly
_HUGE_PAGE_SIZE = 2 << 20
_ENTRIES_PER_TABLE = 512

_CODE64_SELECTOR = 0x08
_DATA_SELECTOR = 0x10
# Descriptors: null; code: present, DPL 0, execute/read, L=1 (64-bit), G=1; data: present,
# read/write, D/B=1, G=1. Bases and limits are ignored in 64-bit mode except for these bits.
_GDT = (0x0000000000000000, 0x00AF9A000000FFFF, 0x00CF92000000FFFF)
_SEGMENT_TYPE_CODE = 0xB  # execute/read, accessed
_SEGMENT_TYPE_DATA = 0x3  # read/write, accessed


def enter(vcpu: Vcpu, memory: GuestMemory, image: GuestImage, processor_signature: int) -> None:
    """Set `vcpu` up so its next KVM_RUN executes `image`'s first instruction.

    `processor_signature` is the guest's CPUID.1:EAX, which a processor leaves in EDX at reset.
    """
    if image.mode == "real":
        enter_real_mode(vcpu, image.entry)
    elif image.mode == "long":
        _enter_long_mode(vcpu, memory, image)
    else:
        _enter_at_reset_vector(vcpu, processor_signature)


# The x86 reset state (Intel SDM vol. 3A, 10.1.1): the first fetch is at 0xfffffff0.
RESET_CS_SELECTOR = 0xF000
RESET_CS_BASE = 0xFFFF0000
RESET_IP = 0xFFF0


def _enter_at_reset_vector(vcpu: Vcpu, processor_signature: int) -> None:
    sregs = vcpu.get_sregs()
    sregs.cs.selector = RESET_CS_SELECTOR
    sregs.cs.base = RESET_CS_BASE
    vcpu.set_sregs(sregs)
    regs = vcpu.get_regs()
    regs.rip = RESET_IP
    regs.rflags = RFLAGS_RESERVED
    # Firmware reads the processor signature from EDX at reset (SDM vol. 3A, 10.1.2). KVM put
    # its own default there when it created the vCPU, before the VMM set any CPUID.
    regs.rdx = processor_signature
    vcpu.set_regs(regs)


def enter_real_mode(vcpu: Vcpu, entry: int) -> None:
    """Start `vcpu` in real mode at linear address `entry` (CS 0), interrupts off."""
    sregs = vcpu.get_sregs()
    sregs.cs.selector = 0
    sregs.cs.base = 0
    vcpu.set_sregs(sregs)
    regs = vcpu.get_regs()
    regs.rip = entry
    regs.rflags = RFLAGS_RESERVED
    vcpu.set_regs(regs)


def _enter_long_mode(vcpu: Vcpu, memory: GuestMemory, image: GuestImage) -> None:
    if image.load_gpa + len(image.image) > PML4_GPA:
        raise GuestMemoryError(f"{image.name} overlaps the page tables at {PML4_GPA:#x}")
    _write_identity_map(memory)
    memory.write(GDT_GPA, struct.pack(f"<{len(_GDT)}Q", *_GDT))

    sregs = vcpu.get_sregs()
    sregs.gdt.base = GDT_GPA
    sregs.gdt.limit = len(_GDT) * 8 - 1
    _flat_segment(sregs.cs, _CODE64_SELECTOR, _SEGMENT_TYPE_CODE, long_mode=True)
    for data_segment in (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
        _flat_segment(data_segment, _DATA_SELECTOR, _SEGMENT_TYPE_DATA, long_mode=False)
    sregs.cr3 = PML4_GPA
    sregs.cr4 = CR4_PAE
    sregs.cr0 = CR0_PE | CR0_ET | CR0_PG
    sregs.efer = EFER_LME | EFER_LMA
    vcpu.set_sregs(sregs)

    regs = vcpu.get_regs()
    regs.rip = image.entry
    regs.rsp = STACK_TOP_GPA
    regs.rflags = RFLAGS_RESERVED
    vcpu.set_regs(regs)


def _write_identity_map(memory: GuestMemory) -> None:
    """PML4[0] -> PDPT[0] -> one page directory of 512 2 MiB pages: gva == gpa below 1 GiB."""
    table_entry = _PAGE_PRESENT | _PAGE_WRITABLE
    memory.write(PML4_GPA, struct.pack("<Q", PDPT_GPA | table_entry))
    memory.write(PDPT_GPA, struct.pack("<Q", PD_GPA | table_entry))
    directory = [
        index * _HUGE_PAGE_SIZE | table_entry | _PAGE_HUGE for index in range(_ENTRIES_PER_TABLE)
    ]
    memory.write(PD_GPA, struct.pack(f"<{_ENTRIES_PER_TABLE}Q", *directory))


def _flat_segment(segment: Any, selector: int, segment_type: int, *, long_mode: bool) -> None:
    segment.selector = selector
    segment.base = 0
    segment.limit = 0xFFFFFFFF
    segment.type = segment_type
    segment.present = 1
    segment.dpl = 0
    segment.s = 1
    segment.l = int(long_mode)
    # D/B must be 0 in a 64-bit code segment; data segments keep the 32-bit default.
    segment.db = int(not long_mode)
    segment.g = 1
    segment.avl = 0
    segment.unusable = 0
