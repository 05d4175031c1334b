"""One stop per KVM_RUN: exits read at the task's next stop, for the session.

A KVM_RUN's exit stays in its vCPU's kvm_run page until the thread enters KVM_RUN again, so the
session, on the seccomp fast path, lets such a call run on with PTRACE_CONT and hands its exit
to the handler at the task's next stop of any kind (its next selected syscall, a signal, its
exit with PTRACE_O_TRACEEXIT, an execve, which is stopped at for this). The return value comes
from KVM's tracepoint (KvmRunFailures). A task that ends without another stop (SIGKILL) takes
that exit with it, as it would a syscall it was in.

When the compiled loop is built (kvm_run_loop.py), a KVM_RUN whose stop names its kvm_run
(`run_address`) is handed over: the loop takes that task's further KVM_RUN stops on registered
vCPUs and gives back records, delivered here as entry + exit before the stop it returns. Any
other syscall entry of the process unregisters its vCPUs (it may change fds or mappings).
A thread that switches between vCPUs goes through Python at each switch.
"""

from __future__ import annotations

import contextlib
import errno as errno_codes
import os
import signal
from collections.abc import Iterator
from typing import Protocol

from conformance.tracer import ptrace_backend as backend
from conformance.tracer.bpf_kvm_run import KvmRunRecorder
from conformance.tracer.bpf_run_exits import BpfRunExits
from conformance.tracer.bpf_vcpu_pages import RegisteringHandler
from conformance.tracer.kvm_calls import KVM_RUN
from conformance.tracer.kvm_run_failures import KvmRunFailures
from conformance.tracer.kvm_run_loop import KvmRunLoop, RunRecord
from conformance.tracer.stops import RecordedStop, SyscallStop, TraceHandler
from conformance.tracer.syscall_args import signed_int

LateExitSource = KvmRunFailures | KvmRunRecorder
"""What reads KVM_RUN's exits late: the failure tracepoint (one stop per call), or the eBPF
recorder (no stop; bpf_run_exits.py)."""


class RunExits(Protocol):
    """What the session asks of either (their docstrings say what each does)."""

    compiled_loop_calls: int
    recorded_calls: int
    throttle_stops: int

    def follow(self, tid: int) -> None: ...
    def forget(self, tid: int) -> None: ...
    def before_entry(self, stop: SyscallStop) -> None: ...
    def hand_over(self, stop: SyscallStop) -> bool: ...
    def deliver(self, stop: SyscallStop) -> None: ...
    def wait(self) -> tuple[int, int] | None: ...
    def signals_end_the_wait(
        self, handlers_installed: bool
    ) -> contextlib.AbstractContextManager[None]: ...
    def close(self) -> None: ...


def late_run_exits(handler: TraceHandler, source: LateExitSource, pid: int) -> RunExits:
    if isinstance(source, KvmRunRecorder):
        assert isinstance(handler, RegisteringHandler)  # tracing.py wraps the Recorder so
        return BpfRunExits(handler, source, pid)
    return LateRunExits(handler, source, pid)


class LateRunExits:
    def __init__(self, handler: TraceHandler, failures: KvmRunFailures, pid: int) -> None:
        """Follow the spawned `pid` (still stopped before its exec)."""
        self._handler = handler
        self._failures = failures
        failures.follow(pid)
        self._loop = KvmRunLoop.load(failures.pipe)
        self._ioctl_number = backend.syscall_number("ioctl")
        self.compiled_loop_calls = 0
        """KVM_RUN calls whose stop the compiled loop took (not through Python)."""
        self.recorded_calls = self.throttle_stops = 0  # the eBPF recorder's (bpf_run_exits.py)

    def follow(self, tid: int) -> None:
        """A new task, still stopped: its KVM_RUN failures count from now on."""
        self._failures.follow(tid)

    def forget(self, tid: int) -> None:
        """A task ended: tids are reused, so its failures must not outlive it."""
        self._failures.forget(tid)

    def before_entry(self, stop: SyscallStop) -> None:
        """A selected syscall is about to reach the handler: unless it is a KVM_RUN (which
        changes no fd or mapping), the compiled loop forgets the process's vCPUs. Forgetting
        them at one vCPU thread's KVM_RUN would send its sibling threads' next KVM_RUNs through
        Python, and theirs this one's, every time."""
        is_kvm_run = stop.nr == self._ioctl_number and stop.args[1] & 0xFFFFFFFF == KVM_RUN
        if self._loop is not None and not is_kvm_run:
            self._loop.forget_process(stop.tgid)

    def hand_over(self, stop: SyscallStop) -> bool:
        """Give a KVM_RUN whose entry the handler took to the compiled loop, which then also
        takes the task's next KVM_RUN stops; False when the session must keep it."""
        loop = self._loop
        if loop is None or stop.run_address is None:
            return False
        fd = signed_int(stop.args[0])
        return loop.register(stop.tid, stop.tgid, fd, stop.run_address) and loop.adopt(
            stop.tid, stop.tgid, fd, stop.run_address
        )

    def deliver(self, stop: SyscallStop) -> None:
        """The exit of a KVM_RUN the session kept, at its task's next stop."""
        stop.return_value = self._failures.return_value(stop.tid)
        self._handler.on_syscall_exit(stop)

    def wait(self) -> tuple[int, int] | None:
        """The next (tid, status) for the session; None when no tracee is left. The KVM_RUNs the
        compiled loop finished meanwhile reach the handler first, in order."""
        loop = self._loop
        if loop is None:
            return backend.wait_any()
        while True:
            for tid in self._failures.queued_tids():
                loop.mark_failure(tid)  # that task's running KVM_RUN failed: its record says so
            waited = loop.wait()
            if waited.failure_bytes:
                self._failures.feed(waited.failure_bytes)
            for record in waited.records:
                self._deliver_record(record)
            if waited.stop is not None:
                return waited.stop
            if waited.error == errno_codes.ECHILD:
                return None
            if waited.error not in (0, errno_codes.EINTR):  # EINTR: a signal handler has run
                raise OSError(waited.error, f"waitpid: {os.strerror(waited.error)}")

    @contextlib.contextmanager
    def signals_end_the_wait(self, handlers_installed: bool) -> Iterator[None]:
        """The session's SIGINT/SIGTERM handlers run only when the compiled loop returns to
        Python: give it Python's signal wakeup fd, written to when a signal arrives."""
        loop = self._loop
        if loop is None or not handlers_installed:
            yield
            return
        read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        loop.watch_signals(read_end)
        try:
            yield
        finally:
            signal.set_wakeup_fd(previous)
            os.close(read_end)
            os.close(write_end)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()
            self._loop = None

    def _deliver_record(self, record: RunRecord) -> None:
        if not record.adopted:
            self.compiled_loop_calls += record.repeat
        args = (record.fd, KVM_RUN, 0, 0, 0, 0)
        if not record.adopted:
            entry = RecordedStop(
                tid=record.tid,
                tgid=record.tgid,
                nr=self._ioctl_number,
                args=args,
                instruction_pointer=0,
                memory=record.entry,
            )
            if not self._handler.on_syscall_entry(entry):
                return
        if record.exit_live:  # the task is stopped at the stop returned with this record
            stop = SyscallStop(
                tid=record.tid,
                tgid=record.tgid,
                nr=self._ioctl_number,
                args=args,
                instruction_pointer=0,
            )
            stop.return_value = self._failures.return_value(record.tid)
        else:
            stop = RecordedStop(
                tid=record.tid,
                tgid=record.tgid,
                nr=self._ioctl_number,
                args=args,
                instruction_pointer=0,
                repeat=record.repeat,
                memory=record.exit,
            )
            stop.return_value = self._failures.take(record.tid) if record.check_failure else 0
        self._handler.on_syscall_exit(stop)
