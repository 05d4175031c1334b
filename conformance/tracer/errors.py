"""Errors the tracer raises; every one is a ConformanceError so the CLI prints one line."""

from __future__ import annotations

import errno as errno_codes
import os
import signal

from conformance.model.errors import TRACER_FAILURE_STATUS, ConformanceError


class TracerError(ConformanceError):
    """Base of the tracer's errors."""


class SpawnError(TracerError):
    """The command to trace could not be started (not found, not executable, exec failed)."""

    exit_status = 127  # as a shell (and env, timeout, nohup) reports a command it cannot start


class StartInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM came before the command to trace had started: an interruption as Python's
    own Ctrl-C is one (a caller that stops on KeyboardInterrupt stops here too), with the
    signal; the command line exits 128 + it, as the program would have."""

    def __init__(self, command: str, signum: int) -> None:
        self.signum = signum
        super().__init__(f"{command}: interrupted by {signal.Signals(signum).name} as it started")


class PtraceCallError(TracerError):
    """A ptrace-family call failed; carries the operation, the task and the errno."""

    def __init__(self, operation: str, tid: int, errno: int) -> None:
        self.operation = operation
        self.tid = tid
        self.errno = errno
        name = errno_codes.errorcode.get(errno, str(errno))
        super().__init__(f"{operation} on task {tid} failed: {name} ({os.strerror(errno)})")


class TaskGoneError(PtraceCallError):
    """ESRCH: the task died (or is no longer stopped) between its stop and our request.

    The wait loop expects this race: a SIGKILL can end a tracee at any moment.
    """


class PtracePermissionError(PtraceCallError):
    """EPERM: the kernel (Yama, capabilities, an existing tracer) refused to let us trace."""


class MemoryReadError(TracerError):
    """A tracee memory read returned fewer bytes than asked (unmapped or vanished address)."""


class TracerFailure(TracerError):
    """The tracer itself failed while the program ran (a decoder's bug, a record it lost): the
    trace is incomplete. Its own exit status, never to be taken for the program's."""

    exit_status = TRACER_FAILURE_STATUS
