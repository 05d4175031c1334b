"""Read a tracee's memory: process_vm_readv, one call for several ranges (x86-64 Linux).

The memory half of ptrace_backend.py (errors map through its error_for). A KVM_RUN exit costs
one read here, so its buffers are reused rather than allocated per call.

Memory the task does not have there (NULL, unmapped, PROT_NONE: EFAULT; an address range that
wraps: EINVAL; ENOMEM, EIO) is a MemoryReadError, as a short read is: the tracee handed the
kernel a bad pointer, which the kernel answers with EFAULT, and the caller records what it could
read. A task that is gone (ESRCH) or may not be read (EPERM) is the tracer's own problem.
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
# What process_vm_readv says about the remote memory itself, not about the task or the tracer.
_BAD_MEMORY = frozenset(
    {errno_codes.EFAULT, errno_codes.EINVAL, errno_codes.ENOMEM, errno_codes.EIO}
)


def read_prefix(pid: int, address: int, size: int) -> bytes:
    """Up to `size` bytes at `address`: all of them, or those before the first byte the task
    cannot read (the kernel copies page by page and stops at the first fault); b"" when the
    first byte is unreadable."""
    buffers = _read_buffers
    buffers.prepare(((address, size),), size)
    copied = _process_vm_readv(pid, buffers.local_pointer, 1, buffers.remote, 1, 0)
    if copied < 0:
        errno = ctypes.get_errno()
        if errno in _BAD_MEMORY:
            return b""
        if errno != errno_codes.ENOSYS:
            raise error_for("process_vm_readv", pid, errno)
        return _read_proc_mem_prefix(pid, address, size)
    return ctypes.string_at(buffers.local.base, copied)


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
        if errno in _BAD_MEMORY:
            raise MemoryReadError(f"task {pid}: {ranges!r}: {errno_codes.errorcode[errno]}")
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
    pieces = [_read_proc_mem_prefix(pid, address, size) for address, size in ranges]
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


def _read_proc_mem_prefix(pid: int, address: int, size: int) -> bytes:
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, size, address)
    except OSError as error:
        if error.errno in _BAD_MEMORY:
            return b""
        raise
    finally:
        os.close(fd)
