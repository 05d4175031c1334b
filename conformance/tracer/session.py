"""Run a program under ptrace and hand its syscalls of interest to a handler.

One thread, one `waitpid(-1, __WALL)` loop, every thread and child process followed. Signals
reach the tracees as they would untraced: signal-delivery-stops re-inject the signal, and
group-stops (SIGSTOP, SIGTSTP, ...) are left in place with PTRACE_LISTEN (hence PTRACE_SEIZE).

Two ways to stop at syscalls, giving the handler the same stream:
- seccomp fast path (spawn only): a BPF filter installed just before exec stops the tracee at
  the selected syscalls only (PTRACE_EVENT_SECCOMP); the task then runs with PTRACE_CONT, or with
  PTRACE_SYSCALL once when the handler asks for the exit. Since Linux 4.8 the seccomp stop comes
  after the syscall-entry point, so that PTRACE_SYSCALL leads straight to the syscall-exit stop.
- plain stepping: PTRACE_SYSCALL at every syscall; the same selection applied here in Python.
Entry and exit are told apart by PTRACE_GET_SYSCALL_INFO, not by counting stops per thread.

One stop per KVM_RUN (fast path, with a `KvmRunFailures`): when the handler marks a stop's exit
as able to wait (`exit_can_wait`), the task runs on with PTRACE_CONT and the handler gets that
exit at the task's next stop, or the compiled loop takes it over (late_run_exits.py).

The tracer's own failure (a handler raising anything but TaskGoneError) never touches the
program: the handler is dropped (`failure` says why) and the program runs on as untraced. The
tasks are detached at their next stop, except on the fast path, whose seccomp filter would fail
the selected syscalls with ENOSYS without a tracer: there the session stays, resuming every stop
and reporting nothing. A spawned program is waited for either way (it dies with its tracer).

Kill safety: the spawned child asks for SIGKILL when its parent thread dies (PR_SET_PDEATHSIG)
before it stops itself for the tracer; once seized, PTRACE_O_EXITKILL kills every tracee if the
tracer dies. The window between fork() and prctl() is closed by the child checking getppid().
SIGINT/SIGTERM to the tracer SIGKILL the spawned tracees (or detach from an attached process)
and run() returns normally, so the caller can flush what it captured.

waitpid(-1) reaps any child of this process: run a session where no other child is awaited.
All calls must come from the thread that called spawn()/attach(): ptrace binds a tracee to it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

from conformance.tracer import ptrace_backend as backend
from conformance.tracer import seccomp
from conformance.tracer import spawn as spawning
from conformance.tracer.errors import PtraceCallError, SpawnError, TaskGoneError, TracerError
from conformance.tracer.late_run_exits import LateExitSource, RunExits, late_run_exits
from conformance.tracer.stops import SyscallStop, TaskKind, TraceHandler, TraceResult

_SignalHandler = Callable[[int, FrameType | None], Any] | int | None

_SYSCALL_STOP = signal.SIGTRAP | 0x80  # PTRACE_O_TRACESYSGOOD marks syscall stops
_GROUP_STOP_SIGNALS = frozenset({signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})
_FOLLOW_OPTIONS = (
    backend.PTRACE_O_TRACESYSGOOD
    | backend.PTRACE_O_TRACEFORK
    | backend.PTRACE_O_TRACEVFORK
    | backend.PTRACE_O_TRACECLONE
    | backend.PTRACE_O_TRACEEXEC
)
_TERMINATION_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass(slots=True)
class _Task:
    tgid: int
    before_exec: bool = False  # spawned child still in our pre-exec code: report nothing
    awaiting_exit: SyscallStop | None = None
    exit_at_next_stop: SyscallStop | None = None  # a KVM_RUN's (late_run_exits.py)
    entered_unselected: bool = False  # at an entry stop whose exit nobody wants


class _UntilItFails:
    """The session's handler, until it raises: then the failure is kept, `on_failure` told, and
    every later call answers as if nothing were selected."""

    def __init__(self, handler: TraceHandler, on_failure: Callable[[], None]) -> None:
        self._handler: TraceHandler | None = handler
        self.wrapped = handler  # for the eBPF recorder's exits, which call its own methods
        self._on_failure = on_failure
        self.failure: str | None = None

    def _failed(self, error: Exception) -> None:
        shown = str(error) if isinstance(error, TracerError) else f"{type(error).__name__}: {error}"
        self.failure = shown
        self._handler = None
        self._on_failure()

    def on_syscall_entry(self, stop: SyscallStop) -> bool:
        try:
            return self._handler is not None and self._handler.on_syscall_entry(stop)
        except TaskGoneError:
            raise
        except Exception as error:  # any failure of ours must spare the program
            self._failed(error)
            return False

    def on_syscall_exit(self, stop: SyscallStop) -> None:  # as often as entries: no getattr
        try:
            if self._handler is not None:
                self._handler.on_syscall_exit(stop)
        except TaskGoneError:
            raise
        except Exception as error:  # any failure of ours must spare the program
            self._failed(error)

    def on_new_task(self, parent_tid: int, child_tid: int, kind: TaskKind) -> None:
        self._call("on_new_task", parent_tid, child_tid, kind)

    def on_exec(self, tid: int) -> None:
        self._call("on_exec", tid)

    def on_task_exit(self, tid: int, status: int) -> None:
        self._call("on_task_exit", tid, status)

    def _call(self, method: str, *args: object) -> None:
        if self._handler is None:
            return
        try:
            getattr(self._handler, method)(*args)
        except TaskGoneError:
            raise
        except Exception as error:  # any failure of ours must spare the program
            self._failed(error)


class TraceSession:
    """Spawn or attach to one program, then run() until every traced task has ended."""

    def __init__(self, handler: TraceHandler) -> None:
        self._guard = _UntilItFails(handler, self._let_go)
        self._handler: TraceHandler = self._guard
        self._tasks: dict[int, _Task] = {}
        # New tasks whose first stop came before their parent's fork/clone event.
        self._unannounced: set[int] = set()
        self._selection: seccomp.SyscallSelection | None = None
        self._main_pid = 0
        self._main_status: int | None = None
        self._exec_error_pipe: int | None = None
        self._attached = False
        self._interrupted_by: int | None = None
        self._detaching = False  # every task is detached at its next stop
        self._late_exits: RunExits | None = None
        self.seccomp_fast_path = False
        """True when the tracee stops only at selected syscalls (spawn with the fast path)."""

    @property
    def failure(self) -> str | None:
        """What went wrong in the tracer, if it did: the trace stops there."""
        return self._guard.failure

    def spawn(
        self,
        argv: Sequence[str],
        *,
        seccomp_fast_path: bool,
        unstopped_ioctls: Sequence[int] = (),
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        stdin: int | None = None,
        stdout: int | None = None,
        stderr: int | None = None,
        run_failures: LateExitSource | None = None,
    ) -> int:
        """Start `argv` traced from its first instruction; returns its pid.

        `unstopped_ioctls`: ioctl requests (e.g. KVM_RUN's number) never reported, in both modes.
        stdin/stdout/stderr: file descriptors to give the program; None passes ours through.
        `run_failures` (fast path only): lets exits marked `exit_can_wait` wait for the next stop,
        or (the eBPF recorder) brings the KVM_RUNs it recorded at each stop.
        """
        environment = dict(os.environ if env is None else env)
        executable = spawning.resolve_executable(argv, environment.get("PATH", os.defpath), cwd)
        if not seccomp_fast_path:
            run_failures = None
        self._selection = seccomp.SyscallSelection.from_names(
            backend.syscall_number, unstopped_ioctls, stop_at_exec=run_failures is not None
        )
        program = self._selection.bpf_program() if seccomp_fast_path else None
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            spawning.exec_child(
                parent=parent,
                executable=executable,
                argv=argv,
                env=environment,
                cwd=cwd,
                stdio=(stdin, stdout, stderr),
                seccomp_program=program,
                error_pipe=write_end,
            )
        os.close(write_end)
        self._exec_error_pipe = read_end
        status = backend.wait_for_stop(pid)
        if not os.WIFSTOPPED(status):
            raise SpawnError(f"{argv[0]}: the child ended before exec (wait status {status:#x})")
        options = _FOLLOW_OPTIONS | backend.PTRACE_O_EXITKILL
        if seccomp_fast_path:
            options |= backend.PTRACE_O_TRACESECCOMP
        if run_failures is not None:
            options |= backend.PTRACE_O_TRACEEXIT  # a last KVM_RUN's exit is read there
        try:
            backend.seize(pid, options)
        except PtraceCallError:
            _kill(pid)  # stopped and untraced, it would wait forever
            backend.wait_for_stop(pid)  # reaps it: SIGKILL ends it
            raise
        if run_failures is not None:
            # The eBPF recorder's exits need the recorder's handler itself (its vCPU pages).
            self._late_exits = late_run_exits(self._guard.wrapped, run_failures, pid)
        os.kill(pid, signal.SIGCONT)
        self.seccomp_fast_path = seccomp_fast_path
        self._main_pid = pid
        self._tasks[pid] = _Task(tgid=pid, before_exec=True)
        return pid

    def attach(
        self, pid: int, *, seccomp_fast_path: bool = False, unstopped_ioctls: Sequence[int] = ()
    ) -> None:
        """Trace a running process and all its threads. Never kills it: SIGINT detaches.

        A filter cannot be installed from outside, so this always steps through every syscall.
        """
        if seccomp_fast_path:
            warnings.warn(
                "attach cannot install a seccomp filter; stepping through every syscall",
                RuntimeWarning,
                stacklevel=2,
            )
        self._selection = seccomp.SyscallSelection.from_names(
            backend.syscall_number, unstopped_ioctls
        )
        self._attached = True
        self._main_pid = pid
        seen: set[int] = set()
        while new := set(backend.thread_ids(pid)) - seen:
            for tid in sorted(new):
                try:
                    backend.seize(tid, _FOLLOW_OPTIONS)
                    backend.interrupt(tid)
                except TaskGoneError:
                    continue
                self._tasks[tid] = _Task(tgid=pid)
                if tid != pid:
                    self._handler.on_new_task(pid, tid, "thread")
            seen |= new

    def run(self) -> TraceResult:
        """Deliver stops to the handler until every tracee has ended (or we were told to stop)."""
        previous = self._install_termination_handlers()
        try:
            with self._signals_end_the_wait(bool(previous)):
                self._loop()
        except BaseException:
            if not self._attached:
                self._kill_all()  # a failing handler must not leave tracees stopped forever
            raise
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if self._late_exits is not None:
                self._late_exits.close()
        self._raise_if_exec_failed()
        if self._main_status is None and self._detaching and not self._attached:
            self._main_status = _wait_for_end(self._main_pid)
        return TraceResult(self._main_pid, self._main_status, self._interrupted_by)

    def _let_go(self) -> None:
        """The handler failed: detach every task at its next stop (or, on the fast path, stay
        and only resume them; see the module's docstring)."""
        if self.seccomp_fast_path and not self._attached:
            return
        self._detaching = True
        for tid in list(self._tasks):
            with contextlib.suppress(TaskGoneError):
                backend.interrupt(tid)

    def _loop(self) -> None:
        while self._tasks or self._unannounced:
            if not self._tasks:
                self._adopt_unannounced()
            waited = self._late_exits.wait() if self._late_exits else backend.wait_any()
            if waited is None:
                break
            tid, status = waited
            if os.WIFSTOPPED(status):
                self._on_stop(tid, status)
            else:
                self._on_end(tid, status)

    def _signals_end_the_wait(
        self, handlers_installed: bool
    ) -> contextlib.AbstractContextManager[None]:
        if self._late_exits is None:
            return contextlib.nullcontext()
        return self._late_exits.signals_end_the_wait(handlers_installed)

    @property
    def compiled_loop_calls(self) -> int:
        """KVM_RUN calls whose stop the compiled loop took."""
        return self._late_exits.compiled_loop_calls if self._late_exits is not None else 0

    @property
    def recorded_calls(self) -> int:
        """KVM_RUN calls the eBPF recorder recorded (bpf_run_exits.py)."""
        return self._late_exits.recorded_calls if self._late_exits is not None else 0

    @property
    def throttle_stops(self) -> int:
        """Stops the eBPF recorder made so that its ring was read (bpf_run_exits.py)."""
        return self._late_exits.throttle_stops if self._late_exits is not None else 0

    def _on_stop(self, tid: int, status: int) -> None:
        task = self._tasks.get(tid)
        if task is None:
            self._on_unknown_stop(tid)
            return
        stop_signal = os.WSTOPSIG(status)
        event = status >> 16
        try:
            if task.exit_at_next_stop is not None:
                self._deliver_waiting_exit(task, task.exit_at_next_stop)
            if self._detaching:
                pending_signal = stop_signal if event == 0 and stop_signal != _SYSCALL_STOP else 0
                backend.detach(tid, pending_signal)
                del self._tasks[tid]
            elif stop_signal == _SYSCALL_STOP:
                self._on_syscall_stop(tid, task)
            elif event == 0:  # signal-delivery-stop: deliver the signal as if untraced
                self._resume(tid, task, stop_signal)
            elif event == backend.PTRACE_EVENT_SECCOMP:
                self._on_seccomp_stop(tid, task)
            elif event in (
                backend.PTRACE_EVENT_FORK,
                backend.PTRACE_EVENT_VFORK,
                backend.PTRACE_EVENT_CLONE,
            ):
                self._on_new_task_event(tid, task, event)
            elif event == backend.PTRACE_EVENT_EXEC:
                self._on_exec_event(tid, task)
            elif event == backend.PTRACE_EVENT_STOP and stop_signal in _GROUP_STOP_SIGNALS:
                backend.listen(tid)  # stay stopped like an untraced task; SIGCONT wakes it
            else:  # PTRACE_EVENT_STOP after seize, interrupt, or a group-stop's end
                self._resume(tid, task)
        except TaskGoneError:
            pass  # SIGKILLed meanwhile; its end arrives from waitpid

    def _on_syscall_stop(self, tid: int, task: _Task) -> None:
        if task.entered_unselected:
            # The stop after an entry stop is that syscall's exit, which nobody asked for:
            # skip the PTRACE_GET_SYSCALL_INFO call (a quarter of a plain stop's cost).
            task.entered_unselected = False
            self._resume(tid, task)
            return
        stop = task.awaiting_exit
        if stop is not None:
            # Syscall stops alternate entry/exit per task, and a seccomp stop is followed by its
            # syscall's exit stop: this is the exit we asked for, and only rax is needed.
            task.awaiting_exit = None
            stop.return_value = backend.syscall_return_value(tid)
            self._handler.on_syscall_exit(stop)
            self._resume(tid, task)
            return
        info = backend.syscall_info(tid)
        if (
            info.op == backend.SYSCALL_INFO_ENTRY
            and not self.seccomp_fast_path
            and not task.before_exec
            and self._selection is not None
            and self._selection.wants(info.nr, info.args[1])
        ):
            self._deliver_entry(tid, task, info)
        task.entered_unselected = (
            info.op == backend.SYSCALL_INFO_ENTRY and task.awaiting_exit is None
        )
        self._resume(tid, task)

    def _on_seccomp_stop(self, tid: int, task: _Task) -> None:
        if not task.before_exec:
            self._deliver_entry(tid, task, backend.syscall_info(tid))
        self._resume(tid, task)

    def _deliver_entry(self, tid: int, task: _Task, info: backend.SyscallInfo) -> None:
        stop = SyscallStop(tid, task.tgid, info.nr, info.args, info.instruction_pointer)
        late_exits = self._late_exits
        if late_exits is not None:
            late_exits.before_entry(stop)
        if not self._handler.on_syscall_entry(stop):
            return
        if not stop.exit_can_wait or late_exits is None:
            task.awaiting_exit = stop
        elif not late_exits.hand_over(stop):
            task.exit_at_next_stop = stop

    def _deliver_waiting_exit(self, task: _Task, stop: SyscallStop) -> None:
        assert self._late_exits is not None
        task.exit_at_next_stop = None
        self._late_exits.deliver(stop)

    def _resume(self, tid: int, task: _Task, deliver_signal: int = 0) -> None:
        if self.seccomp_fast_path and task.awaiting_exit is None:
            backend.resume(tid, deliver_signal)
        else:
            backend.resume_to_syscall(tid, deliver_signal)

    def _on_new_task_event(self, tid: int, task: _Task, event: int) -> None:
        child = backend.event_message(tid)
        if child not in self._tasks:
            if event == backend.PTRACE_EVENT_CLONE:
                child_tgid, _parent = backend.thread_group_and_parent(child)
            else:
                child_tgid = child
            self._announce(tid, child, child_tgid)
        self._resume(tid, task)

    def _announce(self, parent_tid: int, child: int, child_tgid: int) -> None:
        kind: TaskKind = "process" if child_tgid == child else "thread"
        self._tasks[child] = _Task(tgid=child_tgid)
        if self._late_exits is not None:
            self._late_exits.follow(child)  # before it runs: it is stopped until resumed
        self._handler.on_new_task(parent_tid, child, kind)
        if child in self._unannounced:
            self._unannounced.discard(child)
            self._resume(child, self._tasks[child])

    def _on_unknown_stop(self, tid: int) -> None:
        """A new tracee's first stop, ahead of its parent's event: hold it until then."""
        if self._detaching:
            with contextlib.suppress(TaskGoneError):
                backend.detach(tid, 0)
        elif self._interrupted_by is not None:
            _kill(tid)
        else:
            self._unannounced.add(tid)

    def _adopt_unannounced(self) -> None:
        """Announce held tasks whose parent ended before reporting them (killed mid-fork)."""
        for tid in sorted(self._unannounced):
            try:
                tgid, parent = backend.thread_group_and_parent(tid)
            except FileNotFoundError:
                self._unannounced.discard(tid)
                continue
            self._announce(parent, tid, tgid)

    def _on_exec_event(self, tid: int, task: _Task) -> None:
        former_tid = backend.event_message(tid)
        if former_tid != tid:
            # A non-leader thread exec'd and took the leader's tid; the kernel reports no end
            # for its old tid, so report one here (status 0, as for the group's other threads).
            self._tasks[tid] = self._tasks.pop(former_tid, task)
            self._handler.on_task_exit(former_tid, 0)
        self._tasks[tid].before_exec = False
        self._handler.on_exec(tid)
        self._resume(tid, self._tasks[tid])

    def _on_end(self, tid: int, status: int) -> None:
        self._unannounced.discard(tid)
        if tid == self._main_pid:  # also once detached: it is still our child
            self._main_status = status
        if self._tasks.pop(tid, None) is None:
            return  # not a tracee (another child of this process) or already forgotten
        if self._late_exits is not None:
            self._late_exits.forget(tid)
        self._handler.on_task_exit(tid, status)

    def _raise_if_exec_failed(self) -> None:
        if self._exec_error_pipe is None:
            return
        report = os.read(self._exec_error_pipe, 64)
        os.close(self._exec_error_pipe)
        self._exec_error_pipe = None
        if report:
            errno = int(report)
            raise SpawnError(f"exec failed: {os.strerror(errno)} (errno {errno})")

    def _install_termination_handlers(self) -> dict[int, _SignalHandler]:
        if threading.current_thread() is not threading.main_thread():
            return {}  # Python delivers signals to the main thread only
        previous: dict[int, _SignalHandler] = {}
        for signum in _TERMINATION_SIGNALS:
            previous[signum] = signal.signal(signum, self._on_termination_signal)
        return previous

    def _on_termination_signal(self, signum: int, _frame: FrameType | None) -> None:
        """End the trace: waitpid() is retried after this returns, so act on the tracees here.

        Spawned tracees get SIGKILL and their ends end the loop; an attached process is
        interrupted so that each of its tasks can be detached at its next stop.
        """
        self._interrupted_by = signum
        if not self._attached:
            self._kill_all()
            return
        self._detaching = True
        for tid in list(self._tasks):
            try:
                backend.interrupt(tid)
            except TaskGoneError:
                continue

    def _kill_all(self) -> None:
        for tid in [*self._tasks, *self._unannounced]:
            _kill(tid)


def _wait_for_end(pid: int) -> int | None:
    """The wait status of our child `pid`, once it ends untraced (None: not ours any more)."""
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except InterruptedError:
            continue
        except ChildProcessError:
            return None


def _kill(tid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.kill(tid, signal.SIGKILL)
