"""The tracer's public entry points: trace a command, or attach to a running VMM.

    outcome = trace(["qemu-system-x86_64", ...], events.append)

Every decoded event goes to `on_event` as soon as it is complete (streaming). `kvm_run`:
- "full": every KVM_RUN is stopped at, its exit decoded from kvm_run and the VMM's answer to
  IO-in / MMIO-read / RDMSR read at the next entry; with the fast path and KVM's
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from conformance.model.events import Event, KvmRunMode
from conformance.tracer.errors import TracerError
from conformance.tracer.kvm_calls import KVM_RUN
from conformance.tracer.kvm_run_failures import KvmRunFailures
from conformance.tracer.recorder import Recorder
from conformance.tracer.session import TraceSession
from conformance.tracer.stops import TraceResult

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


def _unstopped(kvm_run: KvmRunMode) -> list[int]:
    return [] if kvm_run == "full" else [KVM_RUN]


def trace(
    argv: Sequence[str],
    on_event: Callable[[Event], None],
    *,
    kvm_run: KvmRunMode = "full",
    fast_path: bool = True,
    pin: bool = False,
    stdin: int | None = None,
    stdout: int | None = None,
    stderr: int | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> TraceOutcome:
    """Run `argv` traced to its end. stdin/stdout/stderr: fds to give it (None: ours).

    Raises SpawnError when the command cannot be started (not found, not executable).
    """
    _check_mode(kvm_run)
    counter = _CountingCallback(on_event)
    recorder = Recorder(counter, kvm_run=kvm_run)
    session = TraceSession(recorder)
    with _one_cpu(pin), _run_failures(fast_path and kvm_run == "full") as (failures, why_not):
        # the child inherits the affinity at fork, before its exec
        pid = session.spawn(
            argv,
            seccomp_fast_path=fast_path,
            unstopped_ioctls=_unstopped(kvm_run),
            env=env,
            cwd=cwd,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            run_failures=failures,
        )
        recorder.started(pid)
        result = session.run()
        recorder.finish()
    return TraceOutcome(result, session.seccomp_fast_path, recorder.opened_kvm, counter.count,
                        argv[0], kvm_run, failures is not None, why_not,
                        session.compiled_loop_calls)  # fmt: skip


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
    session.attach(pid, seccomp_fast_path=fast_path, unstopped_ioctls=_unstopped(kvm_run))
    recorder.adopt(pid)  # after seizing: the threads are being stopped, the fds hold still
    result = session.run()
    recorder.finish()
    return TraceOutcome(
        result, False, recorder.opened_kvm, counter.count, _command_of(pid), kvm_run
    )


@contextlib.contextmanager
def _run_failures(wanted: bool) -> Iterator[tuple[KvmRunFailures | None, str | None]]:
    """KVM_RUN failures from KVM's tracepoint when it can be used, else None and why."""
    failures, why_not = KvmRunFailures.start() if wanted else (None, None)
    try:
        yield failures, why_not
    finally:
        if failures is not None:
            failures.close()


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


def _command_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as comm:
            return comm.read().strip()
    except FileNotFoundError:
        return f"process {pid}"


class _CountingCallback:
    def __init__(self, on_event: Callable[[Event], None]) -> None:
        self._on_event = on_event
        self.count = 0

    def __call__(self, event: Event) -> None:
        self.count += 1
        self._on_event(event)
