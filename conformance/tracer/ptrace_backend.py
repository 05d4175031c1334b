"""Thin, typed wrappers over ptrace, waitpid, pidfds and remote registers (x86-64 Linux).

The only module that imports python-ptrace; the rest of the tracer calls these functions. Each
wrapper issues exactly one system call and turns a failure's errno into one of our exceptions
(error_for). Reading tracee memory is tracee_memory.py's.
python-ptrace supplies the ptrace() primitive only; the few requests and options it predates
(SEIZE, INTERRUPT, LISTEN, GET_SYSCALL_INFO, EXITKILL, TRACESECCOMP) are defined here from
<linux/ptrace.h>, and system call numbers come from the generated ABI (<asm/unistd_64.h>).
"""

from __future__ import annotations

import ctypes
import errno as errno_codes
import os
import struct
import sys
import types
from collections.abc import Collection, Sequence
from dataclasses import dataclass


def _give_python_ptrace_our_libc() -> None:
    """python-ptrace's ptrace.ctypes_libc finds the C library with ctypes.util.find_library,
    which runs `ldconfig -p` in a subprocess and parses its output: ~20 ms of CPU (~50 ms of
    wall time on a loaded host) of every trace's start-up. dlopen(NULL) is the C library the
    interpreter already links, with the same ptrace(); the module is given that instead."""
    module = types.ModuleType("ptrace.ctypes_libc")
    module.libc = ctypes.CDLL(None, use_errno=True)  # type: ignore[attr-defined]
    sys.modules.setdefault("ptrace.ctypes_libc", module)


_give_python_ptrace_our_libc()

from ptrace import PtraceError  # noqa: E402 (after our libc is given to python-ptrace)
from ptrace.binding import func as _ptrace  # noqa: E402
from ptrace.binding.linux_struct import siginfo, user_regs_struct  # noqa: E402

from conformance.abi._generated import SYSCALL_NUMBERS  # noqa: E402
from conformance.tracer.errors import (  # noqa: E402
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
PTRACE_O_TRACEEXIT: int = _ptrace.PTRACE_O_TRACEEXIT
PTRACE_EVENT_FORK: int = _ptrace.PTRACE_EVENT_FORK
PTRACE_EVENT_VFORK: int = _ptrace.PTRACE_EVENT_VFORK
PTRACE_EVENT_CLONE: int = _ptrace.PTRACE_EVENT_CLONE
PTRACE_EVENT_EXEC: int = _ptrace.PTRACE_EVENT_EXEC
PTRACE_EVENT_EXIT: int = _ptrace.PTRACE_EVENT_EXIT

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
_SYSCALL_INFO_RET_DATA = struct.Struct("<I")
_SYSCALL_INFO_RETURN = struct.Struct("<qB")
_SYSCALL_INFO_SIZE = 88


@dataclass(frozen=True, slots=True)
class SyscallInfo:
    """What PTRACE_GET_SYSCALL_INFO says about a stopped task (one ptrace call per stop).

    At an entry or seccomp stop `nr` and `args` are set and `return_value` is 0; at an exit stop
    `nr` is -1, `args` is empty and `return_value` is the signed result (-errno on failure).
    `seccomp_data`: at a seccomp stop, the 16 data bits of the filter's SECCOMP_RET_TRACE.
    """

    op: int
    nr: int
    args: tuple[int, ...]
    return_value: int
    instruction_pointer: int
    seccomp_data: int = 0


@dataclass(frozen=True, slots=True)
class SignalInfo:
    """The fields of siginfo_t that tell where a signal came from."""

    signo: int
    code: int
    errno: int


def error_for(operation: str, tid: int, errno: int) -> PtraceCallError:
    """The exception for a failed call on a task: errno mapped in this one place."""
    if errno == errno_codes.ESRCH:
        return TaskGoneError(operation, tid, errno)
    if errno == errno_codes.EPERM:
        return PtracePermissionError(operation, tid, errno)
    return PtraceCallError(operation, tid, errno)


def _request(operation: str, request: int, tid: int, address: int = 0, data: int = 0) -> int:
    try:
        result: int = _ptrace.ptrace(request, tid, address, data)
    except PtraceError as error:
        raise error_for(operation, tid, error.errno or 0) from None
    return result


def _hot_request(operation: str, request: int, tid: int, address: int, data: int) -> int:
    """ptrace() for the calls made at every stop, bound straight to the C library.

    python-ptrace's wrapper costs ~1.5 us a call in argument conversion and result re-signing;
    at two or three calls per stop that was a tenth of a stop's cost. Not for PEEK requests,
    whose -1 can be a value.
    """
    result: int = _libc_ptrace(request, tid, address, data)
    if result == -1:
        raise error_for(operation, tid, ctypes.get_errno())
    return result


def syscall_number(name: str) -> int:
    """The x86-64 number of a system call, generated from <asm/unistd_64.h>."""
    try:
        return SYSCALL_NUMBERS[name]
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
    _hot_request("PTRACE_SYSCALL", _PTRACE_SYSCALL, tid, 0, signal)


def resume(tid: int, signal: int = 0) -> None:
    """PTRACE_CONT: run until a signal or ptrace event (a seccomp RET_TRACE is one)."""
    _hot_request("PTRACE_CONT", _PTRACE_CONT, tid, 0, signal)


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


def saved_registers(tid: int) -> bytes:
    """Every general register of a stopped task (PTRACE_GETREGS), to put back with
    restore_registers after running code of our own in it."""
    regs = user_regs_struct()
    _request("PTRACE_GETREGS", _ptrace.PTRACE_GETREGS, tid, 0, ctypes.addressof(regs))
    return bytes(regs)


def restore_registers(tid: int, saved: bytes) -> None:
    regs = user_regs_struct.from_buffer_copy(saved)
    _request("PTRACE_SETREGS", _ptrace.PTRACE_SETREGS, tid, 0, ctypes.addressof(regs))


def prepare_syscall_rerun(tid: int, nr: int, args: Sequence[int]) -> None:
    """At a syscall-exit stop, set the registers so that resuming re-executes the 2-byte
    `syscall` instruction just run, now as system call `nr` with `args` (x86-64 ABI order).

    orig_rax = -1 keeps the kernel's restart logic away from the rewound state.
    """
    regs = user_regs_struct()
    _request("PTRACE_GETREGS", _ptrace.PTRACE_GETREGS, tid, 0, ctypes.addressof(regs))
    regs.rip -= SYSCALL_INSTRUCTION_SIZE
    regs.rax = nr
    regs.orig_rax = ctypes.c_ulong(-1).value
    padded = (*args, 0, 0, 0, 0, 0, 0)
    regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9 = padded[:6]
    _request("PTRACE_SETREGS", _ptrace.PTRACE_SETREGS, tid, 0, ctypes.addressof(regs))


def rewind_syscall(tid: int, nr: int) -> None:
    """At a syscall-exit stop, make the task run system call `nr` again with the arguments it
    had (the kernel keeps them), as it resumes. Only rip, rax and orig_rax change: the code
    around a `syscall` may keep values in any other register across it."""
    regs = user_regs_struct()
    _request("PTRACE_GETREGS", _ptrace.PTRACE_GETREGS, tid, 0, ctypes.addressof(regs))
    regs.rip -= SYSCALL_INSTRUCTION_SIZE
    regs.rax = nr
    regs.orig_rax = ctypes.c_ulong(-1).value
    _request("PTRACE_SETREGS", _ptrace.PTRACE_SETREGS, tid, 0, ctypes.addressof(regs))


def skip_syscall(tid: int, return_value: int) -> None:
    """At a syscall-entry or seccomp stop: the call is not run and returns `return_value`
    (-errno for a failure). orig_rax = -1 is what makes the kernel skip it."""
    regs = user_regs_struct()
    _request("PTRACE_GETREGS", _ptrace.PTRACE_GETREGS, tid, 0, ctypes.addressof(regs))
    regs.orig_rax = ctypes.c_ulong(-1).value
    regs.rax = ctypes.c_ulong(return_value).value
    _request("PTRACE_SETREGS", _ptrace.PTRACE_SETREGS, tid, 0, ctypes.addressof(regs))


def pending_signals(pid: int) -> int:
    """The signals pending for process `pid` (its own and its main thread's) as a bit mask,
    bit N-1 for signal N, from /proc/<pid>/status (ShdPnd | SigPnd)."""
    mask = 0
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("ShdPnd", "SigPnd"):
                mask |= int(value, 16)
    return mask


# <linux/errno.h> (kernel-internal): a syscall's "restart me" results, which the kernel turns
# into a rerun (or EINTR, for a handler without SA_RESTART) on its way back to user space.
ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND = 512, 513, 514


def restart_interrupted_syscall(tid: int, nr: int, errors: Collection[int]) -> bool:
    """At a signal-delivery-stop on the way out of system call `nr`, which failed with one of
    `errors` (the program has not seen it yet): set the registers so that resuming runs the call
    again, as the kernel restarts one that returned ERESTARTNOINTR (rax = orig_rax, rip back
    over `syscall`). False, and nothing changed, when the registers are not such a return (a
    signal handler's frame was set up first: the program is to see what it was given)."""
    regs = user_regs_struct()
    _request("PTRACE_GETREGS", _ptrace.PTRACE_GETREGS, tid, 0, ctypes.addressof(regs))
    if regs.orig_rax != nr or ctypes.c_long(regs.rax).value not in {-error for error in errors}:
        return False
    regs.rax = regs.orig_rax
    regs.rip -= SYSCALL_INSTRUCTION_SIZE
    _request("PTRACE_SETREGS", _ptrace.PTRACE_SETREGS, tid, 0, ctypes.addressof(regs))
    return True


# `syscall` is 0f 05 on x86-64; at a syscall stop rip points just past it.
SYSCALL_INSTRUCTION = b"\x0f\x05"
SYSCALL_INSTRUCTION_SIZE = len(SYSCALL_INSTRUCTION)


# One buffer reused for every stop: the loop runs on one thread (ptrace requires it) and the
# result is unpacked before the next call.
_syscall_info_buffer = ctypes.create_string_buffer(_SYSCALL_INFO_SIZE)
_syscall_info_address = ctypes.addressof(_syscall_info_buffer)


def syscall_info(tid: int) -> SyscallInfo:
    """PTRACE_GET_SYSCALL_INFO (Linux >= 5.3): entry/exit/seccomp, number, args or result."""
    _hot_request(
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
    if op != SYSCALL_INFO_SECCOMP:
        return SyscallInfo(op, nr, tuple(args), 0, instruction_pointer)
    (ret_data,) = _SYSCALL_INFO_RET_DATA.unpack_from(
        _syscall_info_buffer, _SYSCALL_INFO_HEADER.size + _SYSCALL_INFO_CALL.size
    )
    return SyscallInfo(op, nr, tuple(args), 0, instruction_pointer, ret_data)


def syscall_return_value(tid: int) -> int:
    """rax at a syscall-exit stop, signed (-errno on failure): one PTRACE_PEEKUSER.

    Cheaper than PTRACE_GET_SYSCALL_INFO for a stop the caller already knows is an exit.
    """
    ctypes.set_errno(0)
    value: int = _libc_ptrace(_PTRACE_PEEKUSER, tid, _RAX_OFFSET, 0)
    if value == -1 and (errno := ctypes.get_errno()) != 0:
        raise error_for("PTRACE_PEEKUSER", tid, errno)
    return value


def wait_any() -> tuple[int, int] | None:
    """waitpid(-1, __WALL): the next (tid, status) of any child or tracee; None when none is left.

    Blocks; PEP 475 retries it after a signal handler returns, so a handler that must end the
    wait acts on the tracees (kills them) rather than setting a flag.
    """
    try:
        return os.waitpid(-1, WAIT_ALL_CHILDREN)
    except ChildProcessError:
        return None


def wait_task(tid: int) -> int:
    """waitpid(tid, __WALL): the next status of one tracee (thread or process)."""
    _tid, status = os.waitpid(tid, WAIT_ALL_CHILDREN)
    return status


def wait_for_stop(pid: int) -> int:
    """waitpid(pid, WUNTRACED): the status once the (not yet traced) child stops or ends."""
    _pid, status = os.waitpid(pid, os.WUNTRACED)
    return status


# dlopen(NULL): the C library already linked into the interpreter.
_libc = ctypes.CDLL(None, use_errno=True)
_raw_syscall = _libc.syscall
_raw_syscall.restype = ctypes.c_long
_libc_ptrace = _libc.ptrace
_libc_ptrace.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_ulong, ctypes.c_ulong)
_libc_ptrace.restype = ctypes.c_long
_PTRACE_SYSCALL: int = _ptrace.PTRACE_SYSCALL
_PTRACE_CONT: int = _ptrace.PTRACE_CONT
_PTRACE_PEEKUSER: int = _ptrace.PTRACE_PEEKUSER
_RAX_OFFSET = user_regs_struct.rax.offset


def pidfd_open(pid: int) -> int:
    try:
        return os.pidfd_open(pid)
    except OSError as error:
        raise error_for("pidfd_open", pid, error.errno or 0) from None


def pidfd_getfd(pidfd: int, target_fd: int) -> int:
    """A duplicate, in this process, of file descriptor `target_fd` of the task behind `pidfd`.

    Python has no wrapper (3.11), so this is syscall(2) with the number from the x86-64 table.
    Needs PTRACE_MODE_ATTACH_REALCREDS over the target, which a tracer has.
    """
    fd: int = _raw_syscall(syscall_number("pidfd_getfd"), pidfd, target_fd, 0)
    if fd < 0:
        raise error_for("pidfd_getfd", pidfd, ctypes.get_errno())
    return fd


def send_thread_signal(tgid: int, tid: int, signum: int) -> None:
    """tgkill(2): a signal to one thread of a process (Python only wraps it for its own)."""
    if _raw_syscall(syscall_number("tgkill"), tgid, tid, signum) < 0:
        raise error_for("tgkill", tid, ctypes.get_errno())


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


def tracer_of(tid: int) -> int:
    """The pid of the task's tracer (TracerPid in /proc/<tid>/status), 0 for none."""
    with open(f"/proc/{tid}/status", encoding="ascii", errors="replace") as status:
        for line in status:
            if line.startswith("TracerPid:"):
                return int(line.split()[1])
    return 0


def thread_ids(pid: int) -> list[int]:
    """The tids of a process's threads now (threads may come and go while we look)."""
    return sorted(int(name) for name in os.listdir(f"/proc/{pid}/task"))
