"""The in-kernel filter that stops a tracee only at the system calls the tracer decodes.

A classic-BPF seccomp program returns SECCOMP_RET_TRACE (a ptrace stop) for the syscalls of
interest and SECCOMP_RET_ALLOW for everything else, including ioctls whose request is in an
"unstopped" list: KVM_RUN runs at native speed while every other KVM ioctl is still seen.
Its SECCOMP_RET_TRACE carries TRACE_DATA, so that a stop the traced program's own filter asked
for is told apart from ours. It also stops at the calls after which the fast path can no longer
keep the program's semantics by itself (WATCHED: installing a filter, PTRACE_TRACEME), which
the session handles and never hands to the decoder.

Not traced on purpose: execve/execveat, because PTRACE_O_TRACEEXEC reports every successful
exec as PTRACE_EVENT_EXEC whether or not it is filtered (except while KVM_RUN exits are read
late, see EXEC_SYSCALL_NAMES); clone/clone3/fork/vfork, because
PTRACE_O_TRACECLONE/FORK/VFORK report every new task as an event. Stopping on them too would
cost a stop each and tell us nothing new.

This module takes syscall numbers as arguments (the tracer resolves names through its ptrace
backend) and ioctl numbers as arguments (the caller reads KVM_RUN's from the ABI table), so it
imports neither. The constants below are the kernel's ABI, from the headers named beside them.
"""

from __future__ import annotations

import ctypes
import fcntl
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# <linux/filter.h> / <linux/bpf_common.h>
_BPF_LD_W_ABS = 0x00 | 0x00 | 0x20  # BPF_LD | BPF_W | BPF_ABS
_BPF_JEQ_K = 0x05 | 0x10 | 0x00  # BPF_JMP | BPF_JEQ | BPF_K
_BPF_RET_K = 0x06 | 0x00  # BPF_RET | BPF_K
_BPF_AND_K = 0x04 | 0x50 | 0x00  # BPF_ALU | BPF_AND | BPF_K
# <linux/seccomp.h>
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_TRACE = 0x7FF00000
SECCOMP_RET_USER_NOTIF = 0x7FC00000  # outranks SECCOMP_RET_TRACE when both filters answer
_SECCOMP_MODE_FILTER = 2
# The 16 data bits of our SECCOMP_RET_TRACE ("kc"); a program's own filter that returns
# SECCOMP_RET_TRACE with other data (0 most often) asked for a tracer of its own.
TRACE_DATA = 0x6B63
SECCOMP_SET_MODE_FILTER = 1  # seccomp(2)'s operation
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
_SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1
_SECCOMP_IOC_MAGIC = ord("!")
_NOTIF = struct.Struct("<QII64x")  # struct seccomp_notif: id, pid, flags, seccomp_data
_NOTIF_RESP = struct.Struct("<QqiI")  # struct seccomp_notif_resp: id, val, error, flags
# <linux/audit.h>: EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
AUDIT_ARCH_X86_64 = 0xC000003E
# <linux/prctl.h>
_PR_SET_SECCOMP = 22
_PR_SET_NO_NEW_PRIVS = 38
# <linux/ptrace.h>
_PTRACE_TRACEME = 0
# Offsets in struct seccomp_data {int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6];}
_OFFSET_NR = 0
_OFFSET_ARCH = 4
_OFFSET_ARG0_LOW = 16  # args[0], low 32 bits on little-endian x86-64
_OFFSET_ARG1_LOW = 16 + 8

# Every syscall that creates, duplicates, closes or maps a file descriptor or memory a KVM
# decoder must follow, plus ioctl itself. fcntl is refined below to _FCNTL_TRACED_COMMANDS.
TRACED_SYSCALL_NAMES: tuple[str, ...] = (
    "open",
    "openat",
    "openat2",
    "ioctl",
    "mmap",
    "munmap",
    "mremap",
    "mprotect",
    "madvise",
    "dup",
    "dup2",
    "dup3",
    "fcntl",
    "close",
    "eventfd",
    "eventfd2",
)
# Stopped at only while a KVM_RUN's exit waits for its thread's next stop (kvm_run_failures.py):
# the exec would replace the address space that exit is read from.
EXEC_SYSCALL_NAMES = ("execve", "execveat")
# Calls that change what the fast path can promise (the session's, not the decoder's):
# seccomp(SECCOMP_SET_MODE_FILTER) and prctl(PR_SET_SECCOMP) install a filter of its own, whose
# SECCOMP_RET_ERRNO for a call is decided without any stop of ours; ptrace(PTRACE_TRACEME) asks
# for another tracer.
WATCHED_INSTALLS_FILTER = "installs-filter"
WATCHED_TRACEME = "traceme"
# The fcntl commands a decoder follows: the only two that create a file descriptor, and F_SETFD,
# which sets or clears close-on-exec (what an exec keeps of the fd table).
_FCNTL_TRACED_COMMANDS = (fcntl.F_DUPFD, fcntl.F_DUPFD_CLOEXEC, fcntl.F_SETFD)
# ioctl requests of the terminal type ('T': TCGETS, TIOCGWINSZ, TIOCGPGRP...) are never KVM's:
# Python's open() asks isatty() of every file it opens, ~150 stops while a Python VMM starts.
# They run unstopped and unrecorded, even on a KVM fd (where KVM answers ENOTTY).
_IOCTL_TYPE_MASK = 0xFF00
_TERMINAL_IOCTL_TYPE = ord("T") << 8
# A jump offset in classic BPF is one byte.
_MAX_JUMP = 255


@dataclass(frozen=True)
class SyscallSelection:
    """Which syscalls stop the tracee: the same rule for the BPF filter and for plain stepping."""

    traced_numbers: frozenset[int]
    ioctl_number: int
    fcntl_number: int
    unstopped_ioctl_requests: frozenset[int]
    seccomp_number: int
    prctl_number: int
    ptrace_number: int

    @classmethod
    def from_names(
        cls,
        syscall_number: Callable[[str], int],
        unstopped_ioctl_requests: Sequence[int],
        *,
        stop_at_exec: bool = False,
    ) -> SyscallSelection:
        """`stop_at_exec`: also stop at execve/execveat (see EXEC_SYSCALL_NAMES)."""
        names = (*TRACED_SYSCALL_NAMES, *(EXEC_SYSCALL_NAMES if stop_at_exec else ()))
        return cls(
            traced_numbers=frozenset(syscall_number(name) for name in names),
            ioctl_number=syscall_number("ioctl"),
            fcntl_number=syscall_number("fcntl"),
            unstopped_ioctl_requests=frozenset(
                request & 0xFFFFFFFF for request in unstopped_ioctl_requests
            ),
            seccomp_number=syscall_number("seccomp"),
            prctl_number=syscall_number("prctl"),
            ptrace_number=syscall_number("ptrace"),
        )

    def watched(self, nr: int, first_argument: int) -> str | None:
        """WATCHED_INSTALLS_FILTER, WATCHED_TRACEME, or None: what the BPF program stops at
        for the session rather than for the decoder."""
        if nr == self.seccomp_number and first_argument & 0xFFFFFFFF == SECCOMP_SET_MODE_FILTER:
            return WATCHED_INSTALLS_FILTER  # not its queries (QEMU asks GET_ACTION_AVAIL)
        if nr == self.prctl_number and first_argument & 0xFFFFFFFF == _PR_SET_SECCOMP:
            return WATCHED_INSTALLS_FILTER
        if nr == self.ptrace_number and first_argument & 0xFFFFFFFF == _PTRACE_TRACEME:
            return WATCHED_TRACEME
        return None

    def wants(self, nr: int, second_argument: int) -> bool:
        """What the BPF program decides, for a tracer that steps through every syscall."""
        if nr == self.ioctl_number:
            request = second_argument & 0xFFFFFFFF
            is_terminal = request & _IOCTL_TYPE_MASK == _TERMINAL_IOCTL_TYPE
            return request not in self.unstopped_ioctl_requests and not is_terminal
        if nr == self.fcntl_number:
            return (second_argument & 0xFFFFFFFF) in _FCNTL_TRACED_COMMANDS
        return nr in self.traced_numbers

    def bpf_program(self, stop: int = SECCOMP_RET_TRACE | TRACE_DATA) -> bytes:
        """The filter as an array of struct sock_filter {u16 code; u8 jt; u8 jf; u32 k}.

        `stop`: what a selected call returns; SECCOMP_RET_USER_NOTIF for the filter that lets a
        task go from the fast path (release.py)."""
        program = _Assembler()
        program.load(_OFFSET_ARCH)
        # Another ABI (i386 via int 0x80) is not decoded: let it run.
        program.jump_if_equal(AUDIT_ARCH_X86_64, if_true=None, if_false="allow")
        program.load(_OFFSET_NR)
        program.jump_if_equal(self.ioctl_number, if_true="ioctl", if_false=None)
        program.jump_if_equal(self.fcntl_number, if_true="fcntl", if_false=None)
        program.jump_if_equal(self.seccomp_number, if_true="seccomp", if_false=None)
        program.jump_if_equal(self.prctl_number, if_true="prctl", if_false=None)
        program.jump_if_equal(self.ptrace_number, if_true="ptrace", if_false=None)
        for nr in sorted(self.traced_numbers - {self.ioctl_number, self.fcntl_number}):
            program.jump_if_equal(nr, if_true="trace", if_false=None)
        program.label("allow")
        program.ret(SECCOMP_RET_ALLOW)
        program.label("trace")
        program.ret(stop)
        program.label("ioctl")
        program.load(_OFFSET_ARG1_LOW)
        for request in sorted(self.unstopped_ioctl_requests):
            program.jump_if_equal(request, if_true="ioctl-unstopped", if_false=None)
        program.and_(_IOCTL_TYPE_MASK)
        program.jump_if_equal(_TERMINAL_IOCTL_TYPE, if_true="ioctl-unstopped", if_false=None)
        program.ret(stop)
        program.label("ioctl-unstopped")
        program.ret(SECCOMP_RET_ALLOW)
        program.label("fcntl")
        program.load(_OFFSET_ARG1_LOW)
        for command in _FCNTL_TRACED_COMMANDS:
            program.jump_if_equal(command, if_true="fcntl-traced", if_false=None)
        program.ret(SECCOMP_RET_ALLOW)
        program.label("fcntl-traced")
        program.ret(stop)
        program.label("seccomp")
        program.load(_OFFSET_ARG0_LOW)
        program.jump_if_equal(SECCOMP_SET_MODE_FILTER, if_true="watched", if_false="unwatched")
        program.label("prctl")
        program.load(_OFFSET_ARG0_LOW)
        program.jump_if_equal(_PR_SET_SECCOMP, if_true="watched", if_false="unwatched")
        program.label("ptrace")
        program.load(_OFFSET_ARG0_LOW)
        program.jump_if_equal(_PTRACE_TRACEME, if_true="watched", if_false="unwatched")
        program.label("watched")
        program.ret(stop)
        program.label("unwatched")
        program.ret(SECCOMP_RET_ALLOW)
        return program.assemble()


class _Assembler:
    """Classic BPF with forward jumps to named labels (BPF forbids backward jumps)."""

    def __init__(self) -> None:
        self._instructions: list[tuple[int, str | None, str | None, int]] = []
        self._labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        self._labels[name] = len(self._instructions)

    def load(self, offset: int) -> None:
        self._instructions.append((_BPF_LD_W_ABS, None, None, offset))

    def jump_if_equal(self, value: int, *, if_true: str | None, if_false: str | None) -> None:
        """Compare the accumulator with `value`; None means fall through to the next one."""
        self._instructions.append((_BPF_JEQ_K, if_true, if_false, value))

    def and_(self, mask: int) -> None:
        """accumulator &= mask"""
        self._instructions.append((_BPF_AND_K, None, None, mask))

    def ret(self, value: int) -> None:
        self._instructions.append((_BPF_RET_K, None, None, value))

    def _offset(self, index: int, target: str | None) -> int:
        if target is None:
            return 0
        offset = self._labels[target] - index - 1
        if not 0 <= offset <= _MAX_JUMP:
            raise ValueError(f"seccomp jump to {target!r} out of range: {offset}")
        return offset

    def assemble(self) -> bytes:
        return b"".join(
            struct.pack("<HBBI", code, self._offset(i, jt), self._offset(i, jf), k)
            for i, (code, jt, jf, k) in enumerate(self._instructions)
        )


# Loaded at import, in the tracer: the forked child must not run find_library's subprocesses.
# dlopen(NULL) finds the C library already linked into the interpreter.
_libc = ctypes.CDLL(None, use_errno=True)
# prctl is variadic, but NO_NEW_PRIVS demands that arguments 3-5 be zero: pass all five.
_libc.prctl.argtypes = (ctypes.c_int, *(ctypes.c_ulong,) * 4)


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def install_filter(program: bytes, *, no_new_privs: bool) -> None:
    """Install `program` for the calling thread and its future children; it survives exec.

    Meant for a freshly forked child that a tracer has already seized: SECCOMP_RET_TRACE with
    no tracer fails the syscall with ENOSYS. `no_new_privs` (needed without CAP_SYS_ADMIN, see
    needs_no_new_privs) sets NO_NEW_PRIVS first, which a setuid, setgid or file-capability
    exec then never undoes: the program would keep the caller's privileges. prctl(PR_SET_SECCOMP,
    SECCOMP_MODE_FILTER) is seccomp(SECCOMP_SET_MODE_FILTER, 0) without needing a syscall
    number. Raises OSError.
    """
    filter_array = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.addressof(filter_array))
    if no_new_privs and _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


# <linux/capability.h>
_CAP_SYS_ADMIN = 21


def needs_no_new_privs() -> bool:
    """Whether this process may install a filter only with NO_NEW_PRIVS: without CAP_SYS_ADMIN
    in its effective set (seccomp(2)). Read from /proc/self/status, once per spawn."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return not int(line.split()[1], 16) & (1 << _CAP_SYS_ADMIN)
    return True


def sock_fprog(program: bytes, address: int) -> bytes:
    """struct sock_fprog {u16 len; struct sock_filter *filter} for `program` at `address`."""
    return struct.pack("<H6xQ", len(program) // 8, address)


def _iowr(number: int, size: int) -> int:
    """_IOWR('!', number, size) of <asm-generic/ioctl.h>."""
    return (3 << 30) | (size << 16) | (_SECCOMP_IOC_MAGIC << 8) | number


_NOTIF_RECV = _iowr(0, _NOTIF.size)
_NOTIF_SEND = _iowr(1, _NOTIF_RESP.size)


def continue_notifications(listener: int) -> bool:
    """Answer the next notification of a SECCOMP_RET_USER_NOTIF filter's `listener` with
    "run the call as if allowed" (SECCOMP_USER_NOTIF_FLAG_CONTINUE). False when the filter has
    no task left (or the notification went away, its task killed)."""
    received = bytearray(_NOTIF.size)
    try:
        fcntl.ioctl(listener, _NOTIF_RECV, received)
    except OSError:
        return False  # ENOENT: its task died meanwhile; the caller polls again
    notification_id, _pid, _flags = _NOTIF.unpack(received)
    answer = bytearray(_NOTIF_RESP.pack(notification_id, 0, 0, _SECCOMP_USER_NOTIF_FLAG_CONTINUE))
    try:
        fcntl.ioctl(listener, _NOTIF_SEND, answer)
    except OSError:
        return False
    return True
