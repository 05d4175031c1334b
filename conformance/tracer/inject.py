"""Make a stopped tracee issue a system call of our choosing, then put it back as it was.

Used at a syscall-exit stop (the only kind of stop where this is done): the registers are
saved, rewound two bytes so the `syscall` instruction the task just ran runs again with our
number and arguments, the task is stepped to that call's exit stop, and the saved registers
are restored. The task sees nothing: it resumes from its original exit stop with its original
return value. Other tasks keep running meanwhile; stops of theirs queue in the kernel until
the session's loop waits again.

What the injected call does is real: a fd it creates takes the lowest free number, so a
caller that must leave no trace closes that fd again with a second injected call.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence

from conformance.tracer import ptrace_backend as backend
from conformance.tracer import tracee_memory
from conformance.tracer.errors import TracerError

_SYSCALL_STOP = signal.SIGTRAP | 0x80  # PTRACE_O_TRACESYSGOOD


class InjectionError(TracerError):
    """The tracee could not run the injected call (it ended, or was not at a `syscall`)."""


def can_inject(tid: int, instruction_pointer: int) -> bool:
    """Whether the instruction just before `instruction_pointer` is `syscall` (not int 0x80,
    not sysenter): only then does rewinding re-execute a 64-bit system call."""
    start = instruction_pointer - backend.SYSCALL_INSTRUCTION_SIZE
    return tracee_memory.read_memory(tid, start, backend.SYSCALL_INSTRUCTION_SIZE) == (
        backend.SYSCALL_INSTRUCTION
    )


def inject_syscall(tgid: int, tid: int, nr: int, args: Sequence[int]) -> int:
    """Run syscall `nr` in task `tid` (stopped at a syscall-exit stop); its raw return value.

    Signals that arrive meanwhile are held back and sent again to the task afterwards, so the
    program still gets them, just after the injected call rather than in the middle of it.
    """
    saved = backend.saved_registers(tid)
    held_signals: list[int] = []
    backend.prepare_syscall_rerun(tid, nr, args)
    try:
        return_value = _run_to_exit(tid, held_signals)
    finally:
        backend.restore_registers(tid, saved)
    for signum in held_signals:
        backend.send_thread_signal(tgid, tid, signum)
    return return_value


def _run_to_exit(tid: int, held_signals: list[int]) -> int:
    """Step `tid` through the injected call's entry (and seccomp) stop to its exit stop."""
    while True:
        backend.resume_to_syscall(tid)
        status = backend.wait_task(tid)
        if not os.WIFSTOPPED(status):
            raise InjectionError(f"task {tid} ended during an injected system call")
        stop_signal = os.WSTOPSIG(status)
        event = status >> 16
        if stop_signal == _SYSCALL_STOP:
            info = backend.syscall_info(tid)
            if info.op == backend.SYSCALL_INFO_EXIT:
                return info.return_value
        elif event == 0:
            held_signals.append(stop_signal)
        # A PTRACE_EVENT_SECCOMP stop (our filter traces ioctl and close): step on.
