"""The tracer's public entry points: trace a command, or attach to a running VMM.

    outcome = trace(["qemu-system-x86_64", ...], events.append)

Every decoded event goes to `on_event` as soon as it is complete (streaming). `kvm_run`:
- "full": every KVM_RUN's exit decoded from kvm_run and the VMM's answer to IO-in / MMIO-read /
  RDMSR read at the next entry. With the fast path and eBPF (`ebpf=True`, the default), KVM_RUN
  runs unstopped and an eBPF program on the ioctl tracepoints records every call in the kernel
  (bpf_kvm_run.py), handed to the recorder at the thread's next stop; without eBPF, with KVM's
  kvm_userspace_exit tracepoint, the exit is read at the thread's next stop, so one stop per
  KVM_RUN instead of two (kvm_run_failures.py);
- "summary": KVM_RUN is never stopped at either; each vCPU's exit counters, read from KVM's own
  binary statistics, are recorded once as a KvmRunSummary when the vCPU goes away;
- "off": KVM_RUN is never stopped at (with the seccomp fast path it runs at native speed) and
  therefore not recorded; every other call is.

`pin=True` runs the tracer and the traced program on one CPU (the lowest the tracer may use):
each ptrace stop is two context switches between them, ~4x cheaper on one CPU than across two
on this kind of host (see README, Performance). The tracer's own affinity is restored after.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from conformance.model.events import Event, KvmRunMode
from conformance.tracer.bpf_kvm_run import KvmRunRecorder, KvmRunRecordsLost
from conformance.tracer.bpf_vcpu_pages import RegisteringHandler
from conformance.tracer.errors import TracerError, TracerFailure
from conformance.tracer.kvm_calls import KVM_RUN
from conformance.tracer.kvm_run_failures import KvmRunFailures
from conformance.tracer.late_run_exits import LateExitSource
from conformance.tracer.recorder import Recorder
from conformance.tracer.session import TraceSession
from conformance.tracer.stops import TraceHandler, TraceResult

_KVM_RUN_MODES = ("full", "summary", "off")


@dataclass(frozen=True)
class TraceOutcome:
    """How the traced program ended and what the tracer could see of it."""

    result: TraceResult
    fast_path_used: bool  # the seccomp filter stopped the tracee at selected syscalls only
    opened_kvm: bool  # the program opened /dev/kvm (or had it open when attached)
    events: int  # how many events went to on_event
    command: str
    kvm_run_mode: KvmRunMode  # what the trace holds of KVM_RUN; callers record it as provenance
    # full mode: each KVM_RUN's exit was read at its thread's next stop, one stop per KVM_RUN
    # (kvm_run_failures.py), rather than at a syscall-exit stop of its own
    one_stop_kvm_run: bool = False
    one_stop_unavailable: str | None = None  # why not, when full mode wanted it
    compiled_loop_calls: int = 0  # KVM_RUN calls whose stop the compiled loop took
    # full mode: KVM_RUN ran unstopped, every call recorded by the eBPF recorder
    ebpf_kvm_run: bool = False
    ebpf_unavailable: str | None = None  # why not, when full mode wanted it
    recorded_calls: int = 0  # KVM_RUN calls the eBPF recorder recorded
    throttle_stops: int = 0  # stops it made so that the tracer read its half-full ring

    @property
    def exit_status(self) -> int:
        """The program's exit code, or 128 + signal as a shell reports it."""
        return self.result.shell_status

    @property
    def message(self) -> str | None:
        """A one-line note for the user when the trace is likely not what they wanted."""
        if self.opened_kvm:
            return None
        return (
            f"{self.command} ended with status {self.exit_status} without opening /dev/kvm: "
            "nothing KVM-related to record"
        )


def _check_mode(kvm_run: KvmRunMode) -> None:
    if kvm_run not in _KVM_RUN_MODES:
        raise TracerError(f"kvm_run must be one of {', '.join(_KVM_RUN_MODES)}, not {kvm_run!r}")


def _unstopped(kvm_run: KvmRunMode, recorded: bool) -> list[int]:
    return [] if kvm_run == "full" and not recorded else [KVM_RUN]


def trace(
    argv: Sequence[str],
    on_event: Callable[[Event], None],
    *,
    kvm_run: KvmRunMode = "full",
    fast_path: bool = True,
    pin: bool = False,
    ebpf: bool = True,
    stdin: int | None = None,
    stdout: int | None = None,
    stderr: int | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> TraceOutcome:
    """Run `argv` traced to its end. stdin/stdout/stderr: fds to give it (None: ours).
    `ebpf`: in full mode, record KVM_RUN with the eBPF recorder where the kernel allows it.

    Raises SpawnError when the command cannot be started (not found, not executable), and
    KvmRunRecordsLost at the end when the eBPF recorder lost calls.
    """
    _check_mode(kvm_run)
    counter = _CountingCallback(on_event)
    recorder = Recorder(counter, kvm_run=kvm_run)
    full_late = fast_path and kvm_run == "full"
    with _one_cpu(pin), _late_exit_source(full_late, ebpf=ebpf) as late:
        handler: TraceHandler = recorder
        if isinstance(late.source, KvmRunRecorder):
            handler = RegisteringHandler(recorder, late.source)
        session = TraceSession(handler)
        # the child inherits the affinity at fork, before its exec
        pid = session.spawn(
            argv,
            seccomp_fast_path=fast_path,
            unstopped_ioctls=_unstopped(kvm_run, isinstance(late.source, KvmRunRecorder)),
            env=env,
            cwd=cwd,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            run_failures=late.source,
        )
        recorder.started(pid)
        result = session.run()
        _raise_if_failed(session, argv[0], result)
        _finish(recorder, argv[0], result)
        late.check_nothing_lost()
    return TraceOutcome(
        result=result,
        fast_path_used=session.seccomp_fast_path,
        opened_kvm=recorder.opened_kvm,
        events=counter.count,
        command=argv[0],
        kvm_run_mode=kvm_run,
        one_stop_kvm_run=isinstance(late.source, KvmRunFailures),
        one_stop_unavailable=late.one_stop_unavailable,
        compiled_loop_calls=session.compiled_loop_calls,
        ebpf_kvm_run=isinstance(late.source, KvmRunRecorder),
        ebpf_unavailable=late.ebpf_unavailable,
        recorded_calls=session.recorded_calls,
        throttle_stops=session.throttle_stops,
    )


def attach(
    pid: int,
    on_event: Callable[[Event], None],
    *,
    kvm_run: KvmRunMode = "full",
    fast_path: bool = True,
) -> TraceOutcome:
    """Trace a running process until it ends (or SIGINT/SIGTERM detach us). Its KVM fds and
    kvm_run mappings are learned from /proc. A filter cannot be installed from outside: the
    tracer steps through every syscall, and with `fast_path` (asked for by default, as in
    trace()) says so with a RuntimeWarning. In summary mode only the vCPUs created after
    attaching are counted.
    """
    _check_mode(kvm_run)
    counter = _CountingCallback(on_event)
    recorder = Recorder(counter, kvm_run=kvm_run)
    session = TraceSession(recorder)
    session.attach(
        pid, seccomp_fast_path=fast_path, unstopped_ioctls=_unstopped(kvm_run, recorded=False)
    )
    recorder.adopt(pid)  # after seizing: the threads are being stopped, the fds hold still
    result = session.run()
    _raise_if_failed(session, session.program_name, result)
    _finish(recorder, session.program_name, result)
    return TraceOutcome(
        result=result,
        fast_path_used=False,
        opened_kvm=recorder.opened_kvm,
        events=counter.count,
        command=session.program_name,
        kvm_run_mode=kvm_run,
    )


def _raise_if_failed(session: TraceSession, command: str, result: TraceResult) -> None:
    """TracerFailure once the program has gone on without us, saying how it ended."""
    if session.failure is None:
        return
    if result.wait_status is None:
        ended = f"{command} (pid {result.pid}) was detached and runs on untraced"
    else:
        how = "untraced" if not session.seccomp_fast_path else "with nothing more recorded"
        ended = f"{command} ran on {how} and exited with status {result.shell_status}"
    raise TracerFailure(f"the tracer failed: {session.failure}; the trace stops there; {ended}")


def _finish(recorder: Recorder, command: str, result: TraceResult) -> None:
    """The recorder's last events (summary mode's counters); its failure is the tracer's."""
    try:
        recorder.finish()
    except TracerError:
        raise
    except Exception as error:
        raise TracerFailure(
            f"the tracer failed at the trace's end: {type(error).__name__}: {error}; "
            f"{command} exited with status {result.shell_status}"
        ) from error


@dataclass
class _LateExits:
    source: LateExitSource | None = None
    ebpf_unavailable: str | None = None
    one_stop_unavailable: str | None = None

    def check_nothing_lost(self) -> None:
        if not isinstance(self.source, KvmRunRecorder):
            return
        lost, unreadable = self.source.counters()
        if lost or unreadable:
            raise KvmRunRecordsLost(
                f"the eBPF recorder lost {lost} record(s) of KVM_RUN calls (its ring buffer was "
                f"full) and could not read kvm_run at {unreadable} call(s): the trace is "
                "incomplete"
            )


@contextlib.contextmanager
def _late_exit_source(wanted: bool, *, ebpf: bool) -> Iterator[_LateExits]:
    """Full mode on the fast path: the eBPF recorder, or else KVM_RUN failures from KVM's
    tracepoint (one stop per call), or else nothing (two stops), with why not."""
    late = _LateExits()
    if wanted:
        late.source, late.ebpf_unavailable = _ebpf_recorder() if ebpf else (None, None)
        if late.source is None:
            late.source, late.one_stop_unavailable = KvmRunFailures.start()
    try:
        yield late
    finally:
        if late.source is not None:
            late.source.close()


def _ebpf_recorder() -> tuple[KvmRunRecorder | None, str | None]:
    """The recorder, or None and why not, said on stderr the first time in this process (the
    trace is the same, at a stop per KVM_RUN; `check` or a test session trace many times)."""
    recorder, why_not = KvmRunRecorder.start()
    if why_not is not None and why_not not in _REPORTED:
        _REPORTED.add(why_not)
        print(f"kvm-conformance: no eBPF recorder, a stop per KVM_RUN: {why_not}", file=sys.stderr)
    return recorder, why_not


_REPORTED: set[str] = set()


@contextlib.contextmanager
def _one_cpu(pin: bool) -> Iterator[None]:
    if not pin:
        yield
        return
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)


class _CountingCallback:
    def __init__(self, on_event: Callable[[Event], None]) -> None:
        self._on_event = on_event
        self.count = 0

    def __call__(self, event: Event) -> None:
        self.count += 1
        self._on_event(event)
