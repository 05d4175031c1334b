"""The project's exception hierarchy.

Every error the tool reports to a user is a ConformanceError; the command line turns one into a
one-line message and an exit status instead of a traceback.
"""

from __future__ import annotations

import errno as errno_codes
import os

# The tracer's own failure while a program ran: a status no program's can be mistaken for in
# the usual ranges (0-2 the judgments', 128 + N a program killed by signal N), as env(1) and
# timeout(1) exit 125 when they themselves fail.
TRACER_FAILURE_STATUS = 125


class ConformanceError(Exception):
    """Base of every error this project raises on purpose.

    `exit_status` is what the command line exits with when one ends a command: 2, a usage or
    environment error, unless a subclass says otherwise.
    """

    exit_status = 2


class KvmUnavailableError(ConformanceError):
    """/dev/kvm is missing, not permitted, or speaks an API version we do not know."""


class KvmError(ConformanceError):
    """A KVM ioctl failed; carries the ioctl's name and the errno the kernel returned."""

    def __init__(self, ioctl: str, errno: int, detail: str = "") -> None:
        self.ioctl = ioctl
        self.errno = errno
        name = errno_codes.errorcode.get(errno, str(errno))
        message = f"{ioctl} failed: {name} ({os.strerror(errno)})"
        super().__init__(f"{message}: {detail}" if detail else message)


class GuestMemoryError(ConformanceError):
    """A guest-physical access or a memory layout request outside what was mapped."""


class GuestFault(ConformanceError):
    """The guest stopped in a way that ends the run (shutdown, failed entry, internal error)."""

    exit_status = 3


class UnknownScenarioError(ConformanceError):
    """A scenario name that the runner does not know."""
