"""The tracer's public entry points: trace a command, or attach to a running VMM.

    outcome = trace(["qemu-system-x86_64", ...], events.append)

Every decoded event goes to `on_event` as soon as it is complete (streaming). `kvm_run`:
- "full": every KVM_RUN is stopped at, its exit decoded from kvm_run and the VMM's answer to
  IO-in / MMIO-read / RDMSR read at the next entry;
- "off": KVM_RUN is never stopped at (with the seccomp fast path it runs at native speed) and
  therefore not recorded; every other call is;
- "summary" (per-vCPU exit counters from KVM's binary stats) is not implemented yet.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from conformance.events import Event
from conformance.tracer.errors import TracerError
from conformance.tracer.kvm_calls import KVM_RUN, KvmRunMode
from conformance.tracer.recorder import Recorder
from conformance.tracer.session import TraceResult, TraceSession

_KVM_RUN_MODES = ("full", "summary", "off")


class NotImplementedModeError(TracerError):
    """A tracing mode that is specified but not built yet."""


@dataclass(frozen=True)
class TraceOutcome:
    """How the traced program ended and what the tracer could see of it."""

    result: TraceResult
    fast_path_used: bool  # the seccomp filter stopped the tracee at selected syscalls only
    opened_kvm: bool  # the program opened /dev/kvm (or had it open when attached)
    events: int  # how many events went to on_event
    command: str

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
    if kvm_run == "summary":
        raise NotImplementedModeError(
            "kvm_run='summary' (KVM binary stats counters) is not implemented yet; "
            "use 'full' or 'off'"
        )


def _unstopped(kvm_run: KvmRunMode) -> list[int]:
    return [KVM_RUN] if kvm_run == "off" else []


def trace(
    argv: Sequence[str],
    on_event: Callable[[Event], None],
    *,
    kvm_run: KvmRunMode = "full",
    fast_path: bool = True,
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
    pid = session.spawn(
        argv,
        seccomp_fast_path=fast_path,
        unstopped_ioctls=_unstopped(kvm_run),
        env=env,
        cwd=cwd,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
    )
    recorder.started(pid)
    result = session.run()
    return TraceOutcome(result, session.seccomp_fast_path, recorder.opened_kvm, counter.count,
                        argv[0])  # fmt: skip


def attach(
    pid: int, on_event: Callable[[Event], None], *, kvm_run: KvmRunMode = "full"
) -> TraceOutcome:
    """Trace a running process until it ends (or SIGINT/SIGTERM detach us). Its KVM fds and
    kvm_run mappings are learned from /proc; a filter cannot be installed from outside, so the
    tracer steps through every syscall (no fast path).
    """
    _check_mode(kvm_run)
    counter = _CountingCallback(on_event)
    recorder = Recorder(counter, kvm_run=kvm_run)
    session = TraceSession(recorder)
    session.attach(pid, unstopped_ioctls=_unstopped(kvm_run))
    recorder.adopt(pid)  # after seizing: the threads are being stopped, the fds hold still
    result = session.run()
    return TraceOutcome(result, False, recorder.opened_kvm, counter.count, _command_of(pid))


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
