"""The layout the eBPF recorder's programs and the tracer share: a task's state in the `tasks`
map, the records in the ring buffer (a prefix of a state), their flags, and the records parsed.

A state or record is `meta` (64 bytes) then a snapshot of one kvm_run: its header (exit reason
and union, HEADER_SIZE bytes), `io_length` bytes of PIO data, and for a VM with a coalesced MMIO
zone the ring page. A record is output with `size` bytes: the ring page only when there is one.
"""

from __future__ import annotations

import signal
import struct
from dataclasses import dataclass

from conformance.abi import _generated as abi
from conformance.tracer.kvm_run import HEADER_SIZE, PAGE_SIZE

_META_CODES = "IIiIQQqQII"  # tgid tid fd flags arg count last_ret run io_length size
META = struct.Struct(f"<{_META_CODES}")


def _offsets(codes: str) -> list[int]:
    """Where each field of a packed struct of `codes` (struct module codes) starts."""
    sizes = [struct.calcsize(f"<{code}") for code in codes]
    return [sum(sizes[:index]) for index in range(len(sizes))]


O_TGID, O_TID, O_FD, O_FLAGS, O_ARG, O_COUNT, O_RET, O_RUN, O_IO_LENGTH, O_SIZE = _offsets(
    _META_CODES
)
O_HEADER = 64
IO_CAPACITY = PAGE_SIZE  # KVM's PIO data is one page
O_IO = O_HEADER + HEADER_SIZE
O_RING = O_IO + IO_CAPACITY
STATE_SIZE = O_RING + PAGE_SIZE
PIO_OFFSET = abi.KVM_PIO_PAGE_OFFSET * PAGE_SIZE
RING_OFFSET = abi.KVM_COALESCED_MMIO_PAGE_OFFSET * PAGE_SIZE
EXIT_REASON = O_HEADER + abi.kvm_run.exit_reason.offset
IO = O_HEADER + abi.kvm_run._anon0.offset + abi.kvm_run_anon0.io.offset
IO_SIZE = IO + abi.kvm_run_anon0_io.size.offset
IO_COUNT = IO + abi.kvm_run_anon0_io.count.offset
IO_DATA_OFFSET = IO + abi.kvm_run_anon0_io.data_offset.offset

# flags (state and record)
IN_RUN = 1  # state: a KVM_RUN has entered and not returned
CLOSED = 2  # the group's last call failed: the next call starts a new group
UNREADABLE = 4  # kvm_run could not be copied
COPIED = 8  # the fd is a vCPU with its kvm_run registered: the snapshot holds that kvm_run
RING = 16  # ... and its VM's coalesced MMIO ring page
EXIT = 32  # record: the exit of the task's previous call, copied from that call's page
THROTTLED = 64  # state: the task was sent STOP_SIGNAL, the ring being half full
# The VM's memory is not digested yet (tracer/guest_memory.py): the call was sent STOP_SIGNAL
# at its entry, so that KVM returns (EINTR) before the guest runs; the tracer digests the
# memory at that stop and runs the call again (bpf_run_exits.py).
FIRST_RUN = 128
STOP_SIGNAL = signal.SIGSTOP  # how the programs stop a task for the tracer (THROTTLED, FIRST_RUN)
# A ring's entries are read once: every call its own. A first run is never merged: the tracer
# drops that call.
NOT_MERGED = CLOSED | UNREADABLE | RING | FIRST_RUN

# The counters map (an array of one): records lost (ring full), copies that failed
COUNTERS = struct.Struct("<QQ")
COUNTERS_LOST, COUNTERS_UNREADABLE = 0, 8


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a record copied of one kvm_run: its header, PIO data, ring page (or empty)."""

    run_address: int
    header: bytes
    io: bytes
    ring: bytes

    def memory(self) -> dict[int, bytes]:
        """address -> bytes, as RecordedStop serves reads."""
        pieces = {self.run_address: self.header, self.run_address + PIO_OFFSET: self.io}
        if self.ring:
            pieces[self.run_address + RING_OFFSET] = self.ring
        return pieces


@dataclass(frozen=True, slots=True)
class Group:
    """`count` consecutive KVM_RUNs of one task on one fd with one snapshot at entry; all but
    the last returned 0, the last returned `last_ret` (a record, or a task's current state)."""

    tid: int
    tgid: int
    fd: int
    arg: int
    count: int
    last_ret: int
    flags: int
    snapshot: Snapshot | None  # None: the fd is no registered vCPU (nothing copied)


@dataclass(frozen=True, slots=True)
class ExitCopy:
    """An EXIT record: task `tid`'s previous call's exit, copied from its own kvm_run."""

    tid: int
    flags: int
    snapshot: Snapshot | None


def parse(raw: bytes) -> Group | ExitCopy:
    """A ring record, or a task's state, from its bytes."""
    tgid, tid, fd, flags, arg, count, last_ret, run, io_length, _size = META.unpack_from(raw)
    snapshot = None
    if flags & COPIED and not flags & UNREADABLE:
        ring = raw[O_RING : O_RING + PAGE_SIZE] if flags & RING else b""
        snapshot = Snapshot(run, raw[O_HEADER:O_IO], raw[O_IO : O_IO + io_length], ring)
    if flags & EXIT:
        return ExitCopy(tid, flags, snapshot)
    return Group(tid, tgid, fd, arg, count, last_ret, flags, snapshot)
