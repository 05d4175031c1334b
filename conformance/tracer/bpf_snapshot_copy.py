"""Copying a vCPU's kvm_run into an eBPF recorder record (bpf_programs.py): the "snapshot" of
kvm_run's header, the PIO data of an IO exit and, for a VM with a coalesced MMIO zone, the
ring page, read with bpf_probe_read_user from the VMM's mapping, as the one-stop loop copies it.
"""

from __future__ import annotations

from conformance.abi import _generated as abi
from conformance.tracer.bpf_asm import R0, R1, R2, R3, R6, R8, Assembler, reg
from conformance.tracer.bpf_layout import (
    COUNTERS_UNREADABLE,
    EXIT_REASON,
    IO_CAPACITY,
    IO_COUNT,
    IO_DATA_OFFSET,
    IO_SIZE,
    O_FLAGS,
    O_HEADER,
    O_IO,
    O_IO_LENGTH,
    O_RING,
    O_RUN,
    O_SIZE,
    PIO_OFFSET,
    RING,
    RING_OFFSET,
    STATE_SIZE,
    UNREADABLE,
)
from conformance.tracer.bpf_program_parts import PROBE_READ_USER, count
from conformance.tracer.kvm_run import HEADER_SIZE, PAGE_SIZE, PIO_GUESS


def copy_snapshot(asm: Assembler, maps: dict[str, int], name: str) -> None:
    """Into the scratch record (r8), from the page at its O_RUN, as its O_FLAGS say: the
    header; the PIO data of an IO exit (at least PIO_GUESS bytes, as the Python reader reads
    them); the ring page. Sets io_length and size; a failed header copy sets UNREADABLE."""
    asm.mov(R1, reg(R8))
    asm.add(R1, O_HEADER)
    asm.mov(R2, HEADER_SIZE)
    asm.load(R3, R8, O_RUN, 8)
    asm.call(PROBE_READ_USER)
    asm.jump_if("!=", R0, 0, f"{name}-unreadable")
    pio_length(asm, name)
    asm.mov(R1, reg(R8))
    asm.add(R1, O_IO)
    asm.mov(R2, reg(R6))
    asm.load(R3, R8, O_RUN, 8)
    asm.add(R3, PIO_OFFSET)
    asm.call(PROBE_READ_USER)
    asm.jump_if("==", R0, 0, f"{name}-io-copied")
    asm.mov(R6, 0)  # a kvm_run mapped without its PIO page: no data, as process_vm_readv
    asm.label(f"{name}-io-copied")
    asm.store(R8, O_IO_LENGTH, R6, 4)
    asm.add(R6, O_IO + 7)
    asm.and_(R6, ~7)
    asm.store(R8, O_SIZE, R6, 4)
    asm.load(R1, R8, O_FLAGS, 4)
    asm.and_(R1, RING)
    asm.jump_if("==", R1, 0, f"{name}-done")
    asm.mov(R1, reg(R8))
    asm.add(R1, O_RING)
    asm.mov(R2, PAGE_SIZE)
    asm.load(R3, R8, O_RUN, 8)
    asm.add(R3, RING_OFFSET)
    asm.call(PROBE_READ_USER)
    asm.jump_if("!=", R0, 0, f"{name}-unreadable")
    asm.store_imm(R8, O_SIZE, STATE_SIZE, 4)
    asm.jump(f"{name}-done")
    asm.label(f"{name}-unreadable")
    asm.load(R1, R8, O_FLAGS, 4)
    asm.or_(R1, UNREADABLE)
    asm.store(R8, O_FLAGS, R1, 4)
    asm.store_imm(R8, O_SIZE, O_HEADER, 4)
    count(asm, maps, COUNTERS_UNREADABLE, name)
    asm.label(f"{name}-done")


def pio_length(asm: Assembler, name: str) -> None:
    """r6 = how many PIO bytes to copy for the header in the scratch record (r8): an IO exit's
    size x count at KVM's PIO page, at least PIO_GUESS (as the Python reader reads them), at
    most a page."""
    asm.mov(R6, PIO_GUESS)
    asm.load(R1, R8, EXIT_REASON, 4)
    asm.jump_if("!=", R1, abi.KVM_EXIT_IO, f"{name}-io")
    asm.load(R1, R8, IO_DATA_OFFSET, 8)
    asm.jump_if("!=", R1, PIO_OFFSET, f"{name}-io")
    asm.load(R1, R8, IO_SIZE, 1)
    asm.load(R2, R8, IO_COUNT, 4)
    asm.jump_if(">", R2, IO_CAPACITY, f"{name}-io-all")
    asm.mul(R1, reg(R2))
    asm.jump_if("<=", R1, PIO_GUESS, f"{name}-io")
    asm.jump_if(">", R1, IO_CAPACITY, f"{name}-io-all")
    asm.mov(R6, reg(R1))
    asm.jump(f"{name}-io")
    asm.label(f"{name}-io-all")
    asm.mov(R6, IO_CAPACITY)
    asm.label(f"{name}-io")
