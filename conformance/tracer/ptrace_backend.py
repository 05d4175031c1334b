"""Thin, typed wrappers over ptrace, waitpid, process_vm_readv and pidfds (x86-64 Linux).

The only module that imports python-ptrace; the rest of the tracer calls these functions. Each
wrapper issues exactly one system call and turns a failure's errno into one of our exceptions.
python-ptrace supplies the ptrace() primitive and the syscall-name table; the few requests and
options it predates (SEIZE, INTERRUPT, LISTEN, GET_SYSCALL_INFO, EXITKILL, TRACESECCOMP) are
defined here from <linux/ptrace.h>.
"""

from __future__ import annotations

import ctypes
import errno as errno_codes
import functools
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from ptrace import PtraceError
from ptrace.binding import func as _ptrace
from ptrace.binding.linux_struct import siginfo, user_regs_struct
from ptrace.syscall.linux.x86_64 import SYSCALL_NAMES

from conformance.tracer.errors import (
    MemoryReadError,
    PtraceCallError,
    PtracePermissionError,
    TaskGoneError,
)

# Requests, options and events from <linux/ptrace.h> that python-ptrace 0.9.9 does not define.
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_LISTEN = 0x4208
PTRACE_GET_SYSCALL_INFO = 0x420E
PTRACE_O_TRACESECCOMP = 1 << 7
PTRACE_O_EXITKILL = 1 << 20
PTRACE_EVENT_SECCOMP = 7
PTRACE_EVENT_STOP = 128

# Re-exported so no other module needs python-ptrace for them.
PTRACE_O_TRACESYSGOOD: int = _ptrace.PTRACE_O_TRACESYSGOOD
PTRACE_O_TRACEFORK: int = _ptrace.PTRACE_O_TRACEFORK
PTRACE_O_TRACEVFORK: int = _ptrace.PTRACE_O_TRACEVFORK
PTRACE_O_TRACECLONE: int = _ptrace.PTRACE_O_TRACECLONE
PTRACE_O_TRACEEXEC: int = _ptrace.PTRACE_O_TRACEEXEC
PTRACE_EVENT_FORK: int = _ptrace.PTRACE_EVENT_FORK
PTRACE_EVENT_VFORK: int = _ptrace.PTRACE_EVENT_VFORK
PTRACE_EVENT_CLONE: int = _ptrace.PTRACE_EVENT_CLONE
PTRACE_EVENT_EXEC: int = _ptrace.PTRACE_EVENT_EXEC

# waitpid() flag that also reports clone children (threads); os does not export __WALL.
WAIT_ALL_CHILDREN: int = _ptrace.THREAD_TRACE_FLAGS

# PTRACE_SYSCALL_INFO_* values of ptrace_syscall_info.op.
SYSCALL_INFO_ENTRY = 1
SYSCALL_INFO_EXIT = 2
SYSCALL_INFO_SECCOMP = 3

# struct ptrace_syscall_info: op, pad[3], arch, instruction_pointer, stack_pointer, then a union
# of entry {nr, args[6]}, exit {rval, is_error} and seccomp {nr, args[6], ret_data}.
_SYSCALL_INFO_HEADER = struct.Struct("<B3xIQQ")
_SYSCALL_INFO_CALL = struct.Struct("<Q6Q")
_SYSCALL_INFO_RETURN = struct.Struct("<qB")
_SYSCALL_INFO_SIZE = 88
# x32 entries in the table start here; they are not the x86-64 numbers.
_FIRST_X32_NUMBER = 512


@dataclass(frozen=True, slots=True)
class SyscallInfo:
    """What PTRACE_GET_SYSCALL_INFO says about a stopped task (one ptrace call per stop).

    At an entry or seccomp stop `nr` and `args` are set and `return_value` is 0; at an exit stop
    `nr` is -1, `args` is empty and `return_value` is the signed result (-errno on failure).
    """

    op: int
    nr: int
    args: tuple[int, ...]
    return_value: int
    instruction_pointer: int


@dataclass(frozen=True, slots=True)
class Registers:
    """The registers of a syscall stop (PTRACE_GETREGS), reduced to what a decoder needs."""

    syscall_nr: int  # orig_rax; -1 when the task is not in a system call
    args: tuple[int, int, int, int, int, int]
    return_value: int  # rax, signed; -ENOSYS at a syscall-entry stop
    instruction_pointer: int


@dataclass(frozen=True, slots=True)
class SignalInfo:
    """The fields of siginfo_t that tell where a signal came from."""

    signo: int
    code: int
    errno: int


def _fail(operation: str, tid: int, errno: int) -> PtraceCallError:
    if errno == errno_codes.ESRCH:
        return TaskGoneError(operation, tid, errno)
    if errno == errno_codes.EPERM:
        return PtracePermissionError(operation, tid, errno)
    return PtraceCallError(operation, tid, errno)


def _request(operation: str, request: int, tid: int, address: int = 0, data: int = 0) -> int:
    try:
        result: int = _ptrace.ptrace(request, tid, address, data)
    except PtraceError as error:
        raise _fail(operation, tid, error.errno or 0) from None
    return result


@functools.cache
def _syscall_numbers() -> dict[str, int]:
    return {name: nr for nr, name in SYSCALL_NAMES.items() if nr < _FIRST_X32_NUMBER}


def syscall_number(name: str) -> int:
    """The x86-64 number of a system call, from python-ptrace's table (never hand-copied)."""
    try:
        return _syscall_numbers()[name]
    except KeyError:
        raise KeyError(f"no x86-64 system call named {name!r}") from None


def seize(tid: int, options: int) -> None:
    """PTRACE_SEIZE: trace without stopping; group-stops become PTRACE_EVENT_STOP + LISTEN."""
    _request("PTRACE_SEIZE", PTRACE_SEIZE, tid, 0, options)


def set_options(tid: int, options: int) -> None:
    _request("PTRACE_SETOPTIONS", _ptrace.PTRACE_SETOPTIONS, tid, 0, options)


def interrupt(tid: int) -> None:
    _request("PTRACE_INTERRUPT", PTRACE_INTERRUPT, tid)


def resume_to_syscall(tid: int, signal: int = 0) -> None:
    """PTRACE_SYSCALL: run to the next syscall entry/exit stop, delivering `signal` if not 0."""
    _request("PTRACE_SYSCALL", _ptrace.PTRACE_SYSCALL, tid, 0, signal)


def resume(tid: int, signal: int = 0) -> None:
    """PTRACE_CONT: run until a signal or ptrace event (a seccomp RET_TRACE is one)."""
    _request("PTRACE_CONT", _ptrace.PTRACE_CONT, tid, 0, signal)


def listen(tid: int) -> None:
    """PTRACE_LISTEN: leave a group-stopped task stopped, but let SIGCONT wake it."""
    _request("PTRACE_LISTEN", PTRACE_LISTEN, tid)


def detach(tid: int, signal: int = 0) -> None:
    _request("PTRACE_DETACH", _ptrace.PTRACE_DETACH, tid, 0, signal)


def event_message(tid: int) -> int:
    """PTRACE_GETEVENTMSG: the new tid after a fork/clone event, the former tid after exec."""
    message = ctypes.c_ulong()
    _request("PTRACE_GETEVENTMSG", _ptrace.PTRACE_GETEVENTMSG, tid, 0, ctypes.addressof(message))
    return message.value


def signal_info(tid: int) -> SignalInfo:
    info = siginfo()
    _request("PTRACE_GETSIGINFO", _ptrace.PTRACE_GETSIGINFO, tid, 0, ctypes.addressof(info))
    return SignalInfo(signo=info.si_signo, code=info.si_code, errno=info.si_errno)


def _signed(value: int) -> int:
    return ctypes.c_long(value).value


def registers(tid: int) -> Registers:
    regs = user_regs_struct()
    _request("PTRACE_GETREGS", _ptrace.PTRACE_GETREGS, tid, 0, ctypes.addressof(regs))
    return Registers(
        syscall_nr=_signed(regs.orig_rax),
        args=(regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9),
        return_value=_signed(regs.rax),
        instruction_pointer=regs.rip,
    )


# One buffer reused for every stop: the loop runs on one thread (ptrace requires it) and the
# result is unpacked before the next call.
_syscall_info_buffer = ctypes.create_string_buffer(_SYSCALL_INFO_SIZE)
_syscall_info_address = ctypes.addressof(_syscall_info_buffer)


def syscall_info(tid: int) -> SyscallInfo:
    """PTRACE_GET_SYSCALL_INFO (Linux >= 5.3): entry/exit/seccomp, number, args or result."""
    _request(
        "PTRACE_GET_SYSCALL_INFO",
        PTRACE_GET_SYSCALL_INFO,
        tid,
        _SYSCALL_INFO_SIZE,
        _syscall_info_address,
    )
    op, _arch, instruction_pointer, _stack = _SYSCALL_INFO_HEADER.unpack_from(_syscall_info_buffer)
    if op == SYSCALL_INFO_EXIT:
        return_value, _is_error = _SYSCALL_INFO_RETURN.unpack_from(
            _syscall_info_buffer, _SYSCALL_INFO_HEADER.size
        )
        return SyscallInfo(op, -1, (), return_value, instruction_pointer)
    nr, *args = _SYSCALL_INFO_CALL.unpack_from(_syscall_info_buffer, _SYSCALL_INFO_HEADER.size)
    return SyscallInfo(op, nr, tuple(args), 0, instruction_pointer)


def wait_any() -> tuple[int, int] | None:
    """waitpid(-1, __WALL): the next (tid, status) of any child or tracee; None when none is left.

    Blocks; PEP 475 retries it after a signal handler returns, so a handler that must end the
    wait acts on the tracees (kills them) rather than setting a flag.
    """
    try:
        return os.waitpid(-1, WAIT_ALL_CHILDREN)
    except ChildProcessError:
        return None


def wait_for_stop(pid: int) -> int:
    """waitpid(pid, WUNTRACED): the status once the (not yet traced) child stops or ends."""
    _pid, status = os.waitpid(pid, os.WUNTRACED)
    return status


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
_raw_syscall = _libc.syscall
_raw_syscall.restype = ctypes.c_long


def read_memory(pid: int, address: int, size: int) -> bytes:
    """`size` bytes of a task's memory at `address`, in one process_vm_readv call."""
    return read_many(pid, ((address, size),))[0]


def read_many(pid: int, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
    """Several (address, size) ranges of a task's memory in one process_vm_readv call."""
    total = sum(size for _address, size in ranges)
    buffer = ctypes.create_string_buffer(total)
    local = _IoVec(ctypes.addressof(buffer), total)
    remote = (_IoVec * len(ranges))(*(_IoVec(address, size) for address, size in ranges))
    copied = _process_vm_readv(pid, ctypes.byref(local), 1, remote, len(ranges), 0)
    if copied < 0:
        errno = ctypes.get_errno()
        if errno != errno_codes.ENOSYS:
            raise _fail("process_vm_readv", pid, errno)
        return _read_proc_mem(pid, ranges)
    if copied != total:
        raise MemoryReadError(f"task {pid}: read {copied} of {total} bytes from {ranges!r}")
    data = buffer.raw
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


def pidfd_open(pid: int) -> int:
    try:
        return os.pidfd_open(pid)
    except OSError as error:
        raise _fail("pidfd_open", pid, error.errno or 0) from None


def pidfd_getfd(pidfd: int, target_fd: int) -> int:
    """A duplicate, in this process, of file descriptor `target_fd` of the task behind `pidfd`.

    Python has no wrapper (3.11), so this is syscall(2) with the number from the x86-64 table.
    Needs PTRACE_MODE_ATTACH_REALCREDS over the target, which a tracer has.
    """
    fd: int = _raw_syscall(syscall_number("pidfd_getfd"), pidfd, target_fd, 0)
    if fd < 0:
        raise _fail("pidfd_getfd", pidfd, ctypes.get_errno())
    return fd


# <linux/prctl.h>
_PR_SET_PDEATHSIG = 1
_libc.prctl.argtypes = (ctypes.c_int, *(ctypes.c_ulong,) * 4)


def set_parent_death_signal(signal: int) -> None:
    """prctl(PR_SET_PDEATHSIG): get `signal` when the thread that forked us exits.

    Covers a spawned child before the tracer seizes it (PTRACE_O_EXITKILL covers it after).
    """
    if _libc.prctl(_PR_SET_PDEATHSIG, signal, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")


def thread_group_and_parent(tid: int) -> tuple[int, int]:
    """(Tgid, PPid) of a task, from /proc/<tid>/status (readable for any thread's tid)."""
    fields: dict[str, int] = {}
    with open(f"/proc/{tid}/status", encoding="ascii", errors="replace") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("Tgid", "PPid"):
                fields[key] = int(value)
                if len(fields) == 2:
                    break
    return fields["Tgid"], fields["PPid"]


def thread_ids(pid: int) -> list[int]:
    """The tids of a process's threads now (threads may come and go while we look)."""
    return sorted(int(name) for name in os.listdir(f"/proc/{pid}/task"))
