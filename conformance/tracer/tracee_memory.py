"""Read a tracee's memory: process_vm_readv, one call for several ranges (x86-64 Linux).

The memory half of ptrace_backend.py (errors map through its error_for). A KVM_RUN exit costs
one read here, so its buffers are reused rather than allocated per call.
"""

from __future__ import annotations

import ctypes
import errno as errno_codes
import os
from collections.abc import Sequence

from conformance.tracer.errors import MemoryReadError
from conformance.tracer.ptrace_backend import error_for


class _IoVec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("length", ctypes.c_size_t))


# dlopen(NULL): the C library already linked into the interpreter.
_libc = ctypes.CDLL(None, use_errno=True)
_process_vm_readv = _libc.process_vm_readv
_process_vm_readv.argtypes = (
    ctypes.c_int,
    ctypes.POINTER(_IoVec),
    ctypes.c_ulong,
    ctypes.POINTER(_IoVec),
    ctypes.c_ulong,
    ctypes.c_ulong,
)
_process_vm_readv.restype = ctypes.c_ssize_t


def read_memory(pid: int, address: int, size: int) -> bytes:
    """`size` bytes of a task's memory at `address`, in one process_vm_readv call."""
    return read_many(pid, ((address, size),))[0]


class _ReadBuffers:
    """The local buffer and remote iovec array of process_vm_readv, reused across reads.

    A read per KVM_RUN exit made allocating them a visible share of a stop's cost. The loop
    runs on one thread (ptrace requires it) and every read is copied out before the next.
    """

    def __init__(self) -> None:
        self.size = 0
        self.buffer = ctypes.create_string_buffer(0)
        self.local = _IoVec(0, 0)
        self.local_pointer = ctypes.pointer(self.local)
        self.remote = (_IoVec * 0)()

    def prepare(self, ranges: Sequence[tuple[int, int]], total: int) -> None:
        if total > self.size:
            self.size = max(total, 4096)
            self.buffer = ctypes.create_string_buffer(self.size)
            self.local.base = ctypes.addressof(self.buffer)
        self.local.length = total
        if len(ranges) > len(self.remote):
            self.remote = (_IoVec * max(len(ranges), 8))()
        for slot, (address, size) in zip(self.remote, ranges, strict=False):
            slot.base = address
            slot.length = size


_read_buffers = _ReadBuffers()


def read_many(pid: int, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
    """Several (address, size) ranges of a task's memory in one process_vm_readv call."""
    total = 0
    for _address, size in ranges:
        total += size
    buffers = _read_buffers
    buffers.prepare(ranges, total)
    copied = _process_vm_readv(pid, buffers.local_pointer, 1, buffers.remote, len(ranges), 0)
    if copied < 0:
        errno = ctypes.get_errno()
        if errno != errno_codes.ENOSYS:
            raise error_for("process_vm_readv", pid, errno)
        return _read_proc_mem(pid, ranges)
    if copied != total:
        raise MemoryReadError(f"task {pid}: read {copied} of {total} bytes from {ranges!r}")
    data = ctypes.string_at(buffers.local.base, total)
    if len(ranges) == 1:
        return [data]
    pieces: list[bytes] = []
    offset = 0
    for _address, size in ranges:
        pieces.append(data[offset : offset + size])
        offset += size
    return pieces


def _read_proc_mem(pid: int, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
    """Fallback for kernels built without process_vm_readv (CONFIG_CROSS_MEMORY_ATTACH=n)."""
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    try:
        pieces = [os.pread(fd, size, address) for address, size in ranges]
    finally:
        os.close(fd)
    for (address, size), piece in zip(ranges, pieces, strict=True):
        if len(piece) != size:
            raise MemoryReadError(f"task {pid}: read {len(piece)} of {size} bytes at {address:#x}")
    return pieces


def write_memory(pid: int, address: int, data: bytes) -> None:
    """Write `data` into a stopped task's memory at `address` (through /proc/PID/mem, which a
    tracer may write); a short write raises MemoryReadError, as a short read does."""
    descriptor = os.open(f"/proc/{pid}/mem", os.O_WRONLY | os.O_CLOEXEC)
    try:
        written = os.pwrite(descriptor, data, address)
    finally:
        os.close(descriptor)
    if written != len(data):
        raise MemoryReadError(f"task {pid}: wrote {written} of {len(data)} bytes at {address:#x}")
