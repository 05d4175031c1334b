"""isa-debug-exit: a port whose write ends the run, the way QEMU's device of that name does.

QEMU exits with status (value << 1) | 1 for a written value, so a guest can never report 0
(which stays QEMU's own "success"). Here the run loop turns the request into that same status.
"""

from __future__ import annotations

DEBUG_EXIT_PORT = 0xF4
DEBUG_EXIT_PORT_COUNT = 4  # QEMU: -device isa-debug-exit,iobase=0xf4,iosize=0x04


class DebugExitRequested(Exception):
    """Raised out of the IoBus to stop the run loop; never escapes the machine."""

    def __init__(self, status: int) -> None:
        super().__init__(f"the guest asked to exit with status {status}")
        self.status = status


def exit_status(value: int) -> int:
    return (value << 1) | 1


class DebugExitPort:
    """Register for DEBUG_EXIT_PORT_COUNT ports at DEBUG_EXIT_PORT."""

    def read_port(self, offset: int, size: int) -> int:
        return 0

    def write_port(self, offset: int, size: int, value: int) -> None:
        raise DebugExitRequested(exit_status(value))
