"""What a TraceSession hands its handler (one SyscallStop per selected syscall, the handler's
protocol) and what it returns (TraceResult): the session's interface, apart from its loop.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from conformance.tracer import tracee_memory
from conformance.tracer.errors import MemoryReadError

TaskKind = Literal["thread", "process"]


@dataclass(slots=True)
class SyscallStop:
    """One selected syscall of one task; `return_value` is set at its exit stop."""

    tid: int
    tgid: int
    nr: int
    args: tuple[int, ...]
    instruction_pointer: int  # just past the task's `syscall` instruction
    return_value: int | None = None
    # Set by the handler at entry: the exit may be delivered at the task's next stop instead of
    # at an exit stop of its own, its return value taken from KvmRunFailures (late_run_exits.py)...
    exit_can_wait: bool = False
    # ... and, for a KVM_RUN, where its vCPU's kvm_run is: the compiled loop may take over.
    run_address: int | None = None
    repeat: int = 1  # identical calls in a row this stop stands for (the compiled loop's merges)

    def read(self, address: int, size: int) -> bytes:
        """`size` bytes of the task's memory (one process_vm_readv)."""
        return tracee_memory.read_memory(self.tid, address, size)

    def read_many(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        return tracee_memory.read_many(self.tid, ranges)

    def read_prefix(self, address: int, size: int) -> bytes:
        """Up to `size` bytes: those before the first one the task cannot read."""
        return tracee_memory.read_prefix(self.tid, address, size)


@dataclass(slots=True)
class RecordedStop(SyscallStop):
    """A KVM_RUN stop the compiled loop handled: reads are served from the bytes it copied at
    that stop (kvm_run's header and PIO data), the task having run on since."""

    memory: dict[int, bytes] = field(default_factory=dict)  # address -> bytes copied there

    def read(self, address: int, size: int) -> bytes:
        return self.read_many([(address, size)])[0]

    def read_many(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        return [self._copied(address, size) for address, size in ranges]

    def read_prefix(self, address: int, size: int) -> bytes:
        for base, data in self.memory.items():
            if base <= address < base + len(data):
                return data[address - base : address - base + size]
        return b""

    def _copied(self, address: int, size: int) -> bytes:
        for base, data in self.memory.items():
            if base <= address and address + size <= base + len(data):
                return data[address - base : address - base + size]
        raise MemoryReadError(
            f"task {self.tid}: {size} bytes at {address:#x} were not copied at its KVM_RUN stop"
        )


class TraceHandler(Protocol):
    """What the session calls, in each task's own order. Calls run while the task is stopped."""

    def on_syscall_entry(self, stop: SyscallStop) -> bool:
        """A selected syscall is about to run; return True to get its exit too."""
        ...

    def on_syscall_exit(self, stop: SyscallStop) -> None: ...

    def on_new_task(self, parent_tid: int, child_tid: int, kind: TaskKind) -> None:
        """Called before any syscall of the child is reported."""
        ...

    def on_exec(self, tid: int) -> None:
        """`tid` (its group's leader) now runs a new program."""
        ...

    def on_task_exit(self, tid: int, status: int) -> None:
        """A task ended; `status` is the raw wait status."""
        ...


@dataclass(frozen=True)
class TraceResult:
    """How the traced program ended, as its own parent would have seen it."""

    pid: int
    wait_status: int | None  # None when we detached from an attached process before its end
    interrupted_by: int | None  # SIGINT/SIGTERM that made the tracer end the trace early

    @property
    def exit_code(self) -> int | None:
        if self.wait_status is not None and os.WIFEXITED(self.wait_status):
            return os.WEXITSTATUS(self.wait_status)
        return None

    @property
    def exit_signal(self) -> int | None:
        if self.wait_status is not None and os.WIFSIGNALED(self.wait_status):
            return os.WTERMSIG(self.wait_status)
        return None

    @property
    def shell_status(self) -> int:
        """The exit code, or 128 + the signal number as a shell reports a killed command."""
        if self.exit_signal is not None:
            return 128 + self.exit_signal
        return self.exit_code if self.exit_code is not None else 0
