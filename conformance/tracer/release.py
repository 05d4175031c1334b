"""Let a task go from the fast path with its calls still working, for a tracer of its own.

A task that calls PTRACE_TRACEME asks its parent to trace it, so we must detach it; but the
fast path's filter stays on it (a filter cannot be removed), and its SECCOMP_RET_TRACE with no
tracer of ours would fail every open, ioctl, mmap and close with ENOSYS. So before detaching,
the task installs a second filter, selecting the same calls, whose SECCOMP_RET_USER_NOTIF
outranks our filter's SECCOMP_RET_TRACE; a thread here answers each of its notifications with
"continue", and the call runs as if no filter were there. The task's own filter, if any, still
decides first where it outranks both (SECCOMP_RET_ERRNO, KILL, TRAP).

The task installs that filter itself: injected calls (inject.py) at a syscall-exit stop map a
scratch page, copy the program there, call seccomp(SECCOMP_SET_MODE_FILTER,
SECCOMP_FILTER_FLAG_NEW_LISTENER), unmap the page; its listener fd is copied here (pidfd_getfd)
and closed in the task. The answering thread lives until every task under the filter is gone:
the tracer waits for it at its end (`close`), since a listener closed early fails their calls.
"""

from __future__ import annotations

import mmap
import os
import select
import threading

from conformance.tracer import inject, seccomp, tracee_memory
from conformance.tracer import ptrace_backend as backend

_PAGE = 4096


def install_continuing_filter(
    tgid: int, tid: int, program: bytes, listeners: ContinuingListeners
) -> None:
    """In `tid` (stopped at a syscall-exit stop): install `program` (SECCOMP_RET_USER_NOTIF for
    the selected calls) with a listener, which `listeners` answers from then on (the task's
    next selected call waits for an answer: the injected munmap and close are such calls), and
    leave no fd or mapping behind."""
    nr = backend.syscall_number

    def call(name: str, *args: int) -> int:
        result = inject.inject_syscall(tgid, tid, nr(name), args)
        if -4096 < result < 0:
            raise OSError(-result, f"{name} injected into task {tid}: {os.strerror(-result)}")
        return result

    scratch = call("mmap", 0, _PAGE, mmap.PROT_READ | mmap.PROT_WRITE,
                   mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, 2**64 - 1, 0)  # fmt: skip
    try:
        fprog = seccomp.sock_fprog(program, scratch + 16)
        tracee_memory.write_memory(tid, scratch, fprog + program)
        listener = call(
            "seccomp", seccomp.SECCOMP_SET_MODE_FILTER,
            seccomp.SECCOMP_FILTER_FLAG_NEW_LISTENER, scratch,
        )  # fmt: skip
        pidfd = backend.pidfd_open(tgid)  # fds are the process's; a thread's pidfd: Linux 6.9
        try:
            listeners.add(backend.pidfd_getfd(pidfd, listener))
        finally:
            os.close(pidfd)
        call("close", listener)
    finally:
        call("munmap", scratch, _PAGE)


class ContinuingListeners:
    """The thread that answers every notification of the listeners it is given."""

    def __init__(self) -> None:
        self._poll = select.poll()
        self._listeners: set[int] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wakeup_read, self._wakeup_write = os.pipe2(os.O_CLOEXEC)
        self._poll.register(self._wakeup_read, select.POLLIN)

    def add(self, listener: int) -> None:
        with self._lock:
            self._listeners.add(listener)
            self._poll.register(listener, select.POLLIN)
        if self._thread is None:
            self._thread = threading.Thread(target=self._answer, name="seccomp-notify", daemon=True)
            self._thread.start()
        os.write(self._wakeup_write, b"x")

    def close(self) -> None:
        """Wait until no task is left under any listener's filter, then let them go."""
        if self._thread is not None:
            self._thread.join()
        os.close(self._wakeup_read)
        os.close(self._wakeup_write)

    def _answer(self) -> None:
        while True:
            with self._lock:
                if not self._listeners:
                    return
            for descriptor, events in self._poll.poll():
                if descriptor == self._wakeup_read:
                    os.read(self._wakeup_read, 64)
                elif events & select.POLLIN:
                    seccomp.continue_notifications(descriptor)
                elif events & (select.POLLHUP | select.POLLERR):  # no task left under it
                    with self._lock:
                        self._poll.unregister(descriptor)
                        self._listeners.discard(descriptor)
                    os.close(descriptor)
