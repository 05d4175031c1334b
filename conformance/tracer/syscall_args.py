"""Syscall arguments as C declares them: `int` fds in 64-bit registers, NUL-terminated paths."""

from __future__ import annotations

from conformance.tracer.stops import SyscallStop

_PAGE_SIZE = 4096
_PATH_MAX = 4096  # <linux/limits.h>: the kernel refuses longer paths anyway


def signed_int(value: int) -> int:
    """An `int` argument (fd, dirfd) from its register: the low 32 bits, sign-extended."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def read_c_string(stop: SyscallStop, address: int) -> str:
    """A NUL-terminated string of the tracee, read page by page so no read crosses into an
    unmapped page; cut at PATH_MAX, or where the memory stops being readable (a NULL or bad
    path, which the kernel answers with EFAULT). Not UTF-8 bytes are kept as surrogate
    escapes, as os does.
    """
    collected = b""
    while len(collected) < _PATH_MAX:
        chunk = stop.read_prefix(address, _PAGE_SIZE - address % _PAGE_SIZE)
        if not chunk:
            break
        end = chunk.find(b"\0")
        if end >= 0:
            collected += chunk[:end]
            break
        collected += chunk
        address += len(chunk)
    return collected[:_PATH_MAX].decode("utf-8", "surrogateescape")
