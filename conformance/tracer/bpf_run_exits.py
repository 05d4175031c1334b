"""KVM_RUN without a stop: the eBPF recorder's records (bpf_kvm_run.py) turned back into the
entry and exit stops the handler would have had, at the right place in each task's order.

The session's wait goes through here. Before any stop is handed on, every record in the ring
is delivered (a record is committed before its KVM_RUN returns, so everything a task did
before its stop is there); then the stopped task's current group is taken from its state.
Records arrive per task in its own order, and a task's KVM_RUNs all happen between its
stops, so delivering them at any stop keeps each task's order exact; the order across tasks,
which the trace does not compare, is the order of the stops.

A group of `count` calls with snapshot S is `count - 1` calls with S as entry and exit (one
RecordedStop with `repeat`, as the compiled loop merges them) and a last call whose exit is the
task's next snapshot: the next group's, an EXIT record's (the next call used another page), or,
at the task's stop, kvm_run itself, read live as the one-stop loop does. A task that ends
without a stop takes that last exit with it, as it would a syscall it was in.

When the ring is half full a task is stopped with SIGSTOP by the recorder (THROTTLED): that
signal-delivery-stop reads the ring and resumes the task without the signal; a SIGSTOP that
someone else sent (siginfo is not the kernel's) goes to the session as usual.

A VM's first KVM_RUN is stopped the same way (FIRST_RUN), sent SIGSTOP at its entry: KVM
returns EINTR before the guest runs, and at that stop the VM's memory is digested as the
guest will find it (guest_memory.py). The call is then rewound as the kernel restarts a
syscall (rax = orig_rax, rip back over `syscall`) and its EINTR record dropped: the VMM sees
the call once, with the result it would have had untraced. KVM has done what it does for a
signal: kvm_run's exit_reason and status fields (the real exit writes them again), its
signal_exits counter, sync_regs applied once. A signal of the VMM's own that arrives at the
same moment may make the kernel set up its handler first; the registers then say so and the
VMM sees EINTR, as it could untraced.
"""

from __future__ import annotations

import contextlib
import errno as errno_codes
import os
from dataclasses import dataclass

from conformance.tracer import ptrace_backend as backend
from conformance.tracer.bpf_kvm_run import KvmRunRecorder, KvmRunRecordsLost
from conformance.tracer.bpf_layout import (
    FIRST_RUN,
    IN_RUN,
    STOP_SIGNAL,
    THROTTLED,
    UNREADABLE,
    ExitCopy,
    Group,
    Snapshot,
)
from conformance.tracer.bpf_vcpu_pages import RegisteringHandler
from conformance.tracer.errors import TaskGoneError
from conformance.tracer.kvm_calls import KVM_RUN
from conformance.tracer.stops import RecordedStop, SyscallStop

# What a KVM_RUN stopped by a pending signal returns: EINTR (KVM_EXIT_INTR), or a restart the
# kernel makes itself when no handler runs (ERESTARTNOINTR, as kvm_pvm returns on this host)
_INTERRUPTED = frozenset(
    {errno_codes.EINTR, backend.ERESTARTSYS, backend.ERESTARTNOINTR, backend.ERESTARTNOHAND}
)
_SI_KERNEL = 0x80  # siginfo's si_code for a signal the kernel sent (bpf_send_signal_thread)


@dataclass(frozen=True, slots=True)
class _Call:
    """A task's last recorded KVM_RUN, whose exit is its next snapshot."""

    group: Group


class BpfRunExits:
    """The session's late-exit source when the eBPF recorder runs (see late_run_exits.py)."""

    def __init__(self, handler: RegisteringHandler, recorder: KvmRunRecorder, pid: int) -> None:
        """Follow the spawned `pid` (still stopped before its exec)."""
        self._handler = handler
        self._recorder = recorder
        self._ioctl_number = backend.syscall_number("ioctl")
        self._waiting_exit: dict[int, _Call] = {}
        # tid -> THROTTLED | FIRST_RUN: tasks the programs sent STOP_SIGNAL that has not been
        # taken back yet (another signal's stop may come first)
        self._signalled: dict[int, int] = {}
        recorder.follow(pid)
        self.compiled_loop_calls = 0  # the compiled loop does not run with the recorder
        self.recorded_calls = 0
        """KVM_RUN calls the recorder saw."""
        self.throttle_stops = 0
        """Stops the recorder made so that the tracer reads a half-full ring."""

    def follow(self, tid: int) -> None:
        self._recorder.follow(tid)

    def forget(self, tid: int) -> None:
        self._recorder.forget(tid)
        self._waiting_exit.pop(tid, None)
        self._signalled.pop(tid, None)

    def before_entry(self, stop: SyscallStop) -> None:
        """Nothing to do: the recorder reads registrations, not stops (bpf_vcpu_pages.py)."""

    def hand_over(self, stop: SyscallStop) -> bool:
        """KVM_RUN never stops with the recorder (the filter lets it run): nothing to take."""
        return False

    def deliver(self, stop: SyscallStop) -> None:
        """The session kept no KVM_RUN exit for later (hand_over is never asked)."""
        raise AssertionError(f"task {stop.tid}: a KVM_RUN stopped while the recorder runs")

    def wait(self) -> tuple[int, int] | None:
        while True:
            waited = backend.wait_any()
            self._deliver_records()
            if waited is None:
                return None
            tid, status = waited
            group = self._recorder.take_state(tid)
            if not os.WIFSTOPPED(status):
                self._deliver_state(tid, group, live=False)
                return waited
            if not self._at_stop(tid, status, group):
                return waited
            with contextlib.suppress(TaskGoneError):  # SIGKILLed: its end comes next
                backend.resume(tid)  # without the signal: the VMM never sees it

    def signals_end_the_wait(
        self, handlers_installed: bool
    ) -> contextlib.AbstractContextManager[None]:
        """Nothing to arrange: the wait is waitpid's, which signal handlers interrupt."""
        return contextlib.nullcontext()

    def close(self) -> None:
        self._deliver_records()

    # --- records -> stops -------------------------------------------------------------------

    def _deliver_records(self) -> None:
        for record in self._recorder.records():
            _check_copied(record.tid, record.flags)
            if isinstance(record, ExitCopy):
                call = self._waiting_exit.pop(record.tid, None)
                if call is not None:
                    self._deliver(call.group, 1, call.group.last_ret, record.snapshot)
            else:
                self._deliver_group(record)

    def _deliver_state(self, tid: int, group: Group | None, *, live: bool) -> None:
        """At `tid`'s stop (`live`: stopped; else ended), its state `group`: its calls not
        delivered yet, the last one's exit read from the stopped task."""
        if group is not None and group.count:
            _check_copied(tid, group.flags)
            self._deliver_group(group)
        call = self._waiting_exit.pop(tid, None)
        if call is not None and live:
            ret = call.group.last_ret
            if call.group.flags & IN_RUN:  # stopped inside KVM_RUN: killed out of it
                ret = -errno_codes.EINTR
            self._deliver(call.group, 1, ret, None, live=True)

    def _at_stop(self, tid: int, status: int, group: Group | None) -> bool:
        """`tid` stopped with its state `group`: deliver it; whether the stop was the
        recorder's own (THROTTLED, FIRST_RUN), for the session never to see."""
        flags = group.flags if group is not None else 0
        if flags & (THROTTLED | FIRST_RUN):  # its STOP_SIGNAL is this stop or still to come
            self._signalled[tid] = self._signalled.get(tid, 0) | flags
        if group is not None and flags & FIRST_RUN:
            self._handler.before_first_run(tid, group.fd)
        if group is None or not flags & FIRST_RUN or not self._run_again(tid, status, group):
            self._deliver_state(tid, group, live=True)
        if tid not in self._signalled or not self._is_recorders_stop(tid, status):
            return False
        if self._signalled.pop(tid) & THROTTLED:
            self.throttle_stops += 1
        return True

    def _run_again(self, tid: int, status: int, group: Group) -> bool:
        """At a stop on the way out of the VM's first KVM_RUN (the call `group` holds, alone:
        a FIRST_RUN is never merged), its memory digested: when the call failed with EINTR (the
        signal's doing, or an immediate_exit the rerun meets again; or a restart code, which
        would rerun it anyway but reached the recorder first) and the task is at a
        signal-delivery-stop with the call's return in its registers, rewind the call to run
        again and drop its record: the VMM sees the call once, as untraced. The previous call
        of the task gets its exit (this call's entry) here."""
        interrupted = group.count == 1 and not group.flags & IN_RUN
        if not interrupted or -group.last_ret not in _INTERRUPTED:
            return False
        try:
            if not _is_signal_delivery(status) or not backend.restart_interrupted_syscall(
                tid, self._ioctl_number, _INTERRUPTED
            ):
                return False
        except TaskGoneError:
            return False
        call = self._waiting_exit.pop(tid, None)
        if call is not None:
            self._deliver(call.group, 1, call.group.last_ret, group.snapshot)
        return True

    def _deliver_group(self, group: Group) -> None:
        call = self._waiting_exit.pop(group.tid, None)
        if call is not None:
            self._deliver(call.group, 1, call.group.last_ret, group.snapshot)
        if group.count > 1:
            self._deliver(group, group.count - 1, 0, group.snapshot)
        self._waiting_exit[group.tid] = _Call(group)

    def _deliver(
        self,
        group: Group,
        repeat: int,
        ret: int,
        exit_snapshot: Snapshot | None,
        *,
        live: bool = False,
    ) -> None:
        """`repeat` calls of `group` returning `ret`, their exit in `exit_snapshot` (None: the
        fd is no registered vCPU, nothing was copied) or, `live`, in the stopped task."""
        self.recorded_calls += repeat
        args = (group.fd, KVM_RUN, group.arg, 0, 0, 0)
        entry_memory = group.snapshot.memory() if group.snapshot is not None else {}
        tid, tgid, nr = group.tid, group.tgid, self._ioctl_number
        entry = RecordedStop(
            tid=tid, tgid=tgid, nr=nr, args=args, instruction_pointer=0, memory=entry_memory
        )
        if not self._handler.on_syscall_entry(entry):
            return
        if live:
            stop = SyscallStop(tid=tid, tgid=tgid, nr=nr, args=args, instruction_pointer=0)
        else:
            memory = exit_snapshot.memory() if exit_snapshot is not None else {}
            stop = RecordedStop(
                tid=tid,
                tgid=tgid,
                nr=nr,
                args=args,
                instruction_pointer=0,
                repeat=repeat,
                memory=memory,
            )
        stop.return_value = ret
        self._handler.on_syscall_exit(stop)

    @staticmethod
    def _is_recorders_stop(tid: int, status: int) -> bool:
        """Whether the stop is the signal-delivery-stop of the programs' STOP_SIGNAL (the
        kernel's, not someone's kill)."""
        if os.WSTOPSIG(status) != STOP_SIGNAL or not _is_signal_delivery(status):
            return False
        try:
            return backend.signal_info(tid).code == _SI_KERNEL
        except TaskGoneError:
            return False


def _is_signal_delivery(status: int) -> bool:
    """A signal-delivery-stop: no ptrace event, not a syscall stop (TRACESYSGOOD's bit)."""
    return not status >> 16 and not os.WSTOPSIG(status) & 0x80


def _check_copied(tid: int, flags: int) -> None:
    if flags & UNREADABLE:
        raise KvmRunRecordsLost(
            f"task {tid}: the eBPF recorder could not read kvm_run at a KVM_RUN "
            "(bpf_probe_read_user cannot fault a page in): the trace is incomplete"
        )
