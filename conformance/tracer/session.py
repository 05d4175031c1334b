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
SIGINT/SIGTERM to the tracer: the traced program handles them as untraced. A terminal's Ctrl-C
reaches the whole process group, the program too, so the tracer follows it to its end; a signal
the program did not get (sent to the tracer alone) is passed on to it, and a second such signal
SIGKILLs the tracees. An attached process is detached instead, left running. Either way run()
returns normally, so the caller can flush what it captured.

What the fast path cannot keep by itself, the session takes over, and says so on stderr:
- a program that installs its own seccomp filter (stopped at, see seccomp.WATCHED_*; once the
  install succeeded, probes aside): from then on its tasks are stepped through every syscall,
  since its filter's SECCOMP_RET_ERRNO is decided with no stop of ours; a SECCOMP_RET_TRACE of
  its filter (not our TRACE_DATA) fails with ENOSYS, as it does with no tracer;
- PTRACE_TRACEME: the spawned program's parent is this process, which traces it already, so the
  call returns 0 as untraced; any other task is detached and the call runs again, untraced, so
  that its parent traces it; on the fast path it first gets a filter that lets its calls
  through without us (release.py), since ours would fail them with ENOSYS once we are gone;
- a setuid, setgid or file-capability program when this process lacks CAP_SYS_ADMIN (the filter
  then needs NO_NEW_PRIVS, under which it would run without its privileges): no filter for it
  when it is the command; an exec of one later is refused (EPERM), never run unprivileged.
A process that another tracer traces already is not attached to (a task has one tracer): the
error names that tracer, and the process runs on as it was.

waitpid(-1) reaps any child of this process: run a session where no other child is awaited.
All calls must come from the thread that called spawn()/attach(): ptrace binds a tracee to it.
"""

from __future__ import annotations

import contextlib
import errno as errno_codes
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

from conformance.abi._generated import SYSCALL_NUMBERS
from conformance.tracer import ptrace_backend as backend
from conformance.tracer import seccomp
from conformance.tracer import spawn as spawning
from conformance.tracer.errors import (
    PtraceCallError,
    PtracePermissionError,
    SpawnError,
    StartInterrupted,
    TaskGoneError,
    TracerError,
)
from conformance.tracer.late_run_exits import LateExitSource, RunExits, late_run_exits
from conformance.tracer.release import ContinuingListeners, install_continuing_filter
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
# A termination signal the traced program got within this long of the tracer's own was one
# signal sent to both (a terminal's Ctrl-C to the process group), not one for the tracer alone.
_SAME_SIGNAL_SECONDS = 1.0
_SYSCALL_NAMES = {number: name for name, number in SYSCALL_NUMBERS.items()}
_EXEC_NUMBERS = (SYSCALL_NUMBERS["execve"], SYSCALL_NUMBERS["execveat"])


@dataclass(slots=True)
class _Task:
    tgid: int
    before_exec: bool = False  # spawned child still in our pre-exec code: report nothing
    awaiting_exit: SyscallStop | None = None
    exit_at_next_stop: SyscallStop | None = None  # a KVM_RUN's (late_run_exits.py)
    entered_unselected: bool = False  # at an entry stop whose exit nobody wants
    # Stopped at every syscall although the fast path's filter is on it: its own filter may
    # deny a call (SECCOMP_RET_ERRNO) before any stop of ours, so calls are seen at entry.
    stepping: bool = False
    release_at_exit: bool = False  # PTRACE_TRACEME on the fast path: let it go at its exit stop
    installing_filter: bool = False  # in seccomp()/prctl() for a filter of its own, until its exit


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
        # The attached program's name, read while it is stopped (at the seize, at each exec):
        # once it has ended its parent may have reaped it, and /proc no longer has it.
        self.program_name = ""
        self._main_status: int | None = None
        self._exec_error_pipe: int | None = None
        self._attached = False
        self._interrupted_by: int | None = None
        self._detaching = False  # every task is detached at its next stop
        self._late_exits: RunExits | None = None
        self._stepping_processes: set[int] = set()  # their own filter is on them (see above)
        self._said: set[tuple[int, str]] = set()  # (pid, what): each notice once per process
        self._signal_stops: dict[int, float] = {}  # signal -> when a tracee last got it
        self._forwarded: set[int] = set()  # termination signals passed on to the program
        # Installed by spawn()/attach(), put back by run(): a Ctrl-C while the program starts
        # must not be Python's KeyboardInterrupt.
        self._previous_handlers: dict[int, _SignalHandler] = {}
        self._released: ContinuingListeners | None = None  # tasks let go from the fast path
        self._no_new_privs = False  # the fast path's filter came with NO_NEW_PRIVS
        self._killing = False  # _kill_all() was called
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
        self._previous_handlers = self._install_termination_handlers()
        try:
            return self._spawn(
                argv, seccomp_fast_path=seccomp_fast_path, unstopped_ioctls=unstopped_ioctls,
                env=env, cwd=cwd, stdio=(stdin, stdout, stderr), run_failures=run_failures,
            )  # fmt: skip
        except BaseException:
            self._restore_handlers()
            if self._exec_error_pipe is not None:
                os.close(self._exec_error_pipe)
                self._exec_error_pipe = None
            raise

    def _spawn(
        self,
        argv: Sequence[str],
        *,
        seccomp_fast_path: bool,
        unstopped_ioctls: Sequence[int],
        env: Mapping[str, str] | None,
        cwd: str | None,
        stdio: tuple[int | None, int | None, int | None],
        run_failures: LateExitSource | None,
    ) -> int:
        environment = dict(os.environ if env is None else env)
        executable = spawning.resolve_executable(argv, environment.get("PATH", os.defpath), cwd)
        no_new_privs = seccomp.needs_no_new_privs()
        privileged = spawning.privileged(executable) if no_new_privs else None
        if seccomp_fast_path and privileged is not None:
            _say(
                f"{executable} is a {privileged} program and this tracer lacks CAP_SYS_ADMIN: "
                "no seccomp filter for it (it would run without its privileges), every system "
                "call stops"
            )
            seccomp_fast_path = False
        if not seccomp_fast_path:
            run_failures = None
        # With no_new_privs, each exec is looked at: one that would grant privileges is refused.
        self._no_new_privs = no_new_privs and seccomp_fast_path
        self._selection = seccomp.SyscallSelection.from_names(
            backend.syscall_number,
            unstopped_ioctls,
            stop_at_exec=run_failures is not None or self._no_new_privs,
        )
        program = self._selection.bpf_program() if seccomp_fast_path else None
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        parent = os.getpid()
        # Blocked across fork(): the child must not run our handlers (it takes the defaults).
        signal.pthread_sigmask(signal.SIG_BLOCK, _TERMINATION_SIGNALS)
        pid = os.fork()
        if pid == 0:
            spawning.exec_child(
                parent=parent,
                executable=executable,
                argv=argv,
                env=environment,
                cwd=cwd,
                stdio=stdio,
                seccomp_program=program,
                no_new_privs=no_new_privs,
                error_pipe=write_end,
                start_signals=self._start_signals(),
            )
        self._main_pid = pid
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _TERMINATION_SIGNALS)
        os.close(write_end)
        self._exec_error_pipe = read_end
        status = backend.wait_for_stop(pid)
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) in _TERMINATION_SIGNALS:
            raise StartInterrupted(argv[0], os.WTERMSIG(status))  # as it would have, untraced
        if not os.WIFSTOPPED(status):
            raise SpawnError(f"{argv[0]}: the child ended before exec (wait status {status:#x})")
        if self._interrupted_by is not None:  # before it could have run: it is not started
            _kill(pid)
            backend.wait_for_stop(pid)
            raise StartInterrupted(argv[0], self._interrupted_by)
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
        self._previous_handlers = self._install_termination_handlers()
        self._attached = True
        self._main_pid = pid
        self.program_name = _command_of(pid)
        seen: set[int] = set()
        try:
            while new := set(backend.thread_ids(pid)) - seen:
                for tid in sorted(new):
                    self._seize_thread(pid, tid)
                seen |= new
        except BaseException:
            self._restore_handlers()
            raise

    def _seize_thread(self, pid: int, tid: int) -> None:
        try:
            backend.seize(tid, _FOLLOW_OPTIONS)
            backend.interrupt(tid)
        except TaskGoneError:
            return
        except PtracePermissionError:
            tracer = backend.tracer_of(tid)
            if tracer:  # a task has one tracer: say which, and leave the program to it
                raise TracerError(
                    f"process {pid} is traced already, by {tracer} ({_command_of(tracer)}): "
                    "not attached, it runs on as it was"
                ) from None
            raise
        self._tasks[tid] = _Task(tgid=pid)
        if tid != pid:
            self._handler.on_new_task(pid, tid, "thread")

    def run(self) -> TraceResult:
        """Deliver stops to the handler until every tracee has ended (or we were told to stop)."""
        try:
            with self._signals_end_the_wait(bool(self._previous_handlers)):
                self._loop()
        except BaseException:
            if not self._attached:
                self._kill_all()  # a failing handler must not leave tracees stopped forever
            raise
        finally:
            self._restore_handlers()
            if self._late_exits is not None:
                self._late_exits.close()
        if self._released is not None:
            self._released.close()  # a task let go still needs its answers: wait for its end
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
                self._signal_stops[stop_signal] = time.monotonic()
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
        if task.release_at_exit:
            self._release(tid, task)
            return
        if task.installing_filter:  # the exit of seccomp() or prctl(PR_SET_SECCOMP)
            self._after_filter_install(tid, task)
            self._resume(tid, task)
            return
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
        stepped = not self.seccomp_fast_path or task.stepping
        if info.op == backend.SYSCALL_INFO_ENTRY and stepped and not task.before_exec:
            if not self._on_watched_entry(tid, task, info):
                return
            if self._selection is not None and self._selection.wants(info.nr, info.args[1]):
                self._deliver_entry(tid, task, info)
        task.entered_unselected = (
            info.op == backend.SYSCALL_INFO_ENTRY and task.awaiting_exit is None
        )
        self._resume(tid, task)

    def _on_seccomp_stop(self, tid: int, task: _Task) -> None:
        info = backend.syscall_info(tid)
        if info.seccomp_data != seccomp.TRACE_DATA:
            self._fail_as_without_tracer(tid, task, info)
        elif task.before_exec or task.stepping:
            pass  # a stepping task's call was seen at its entry stop
        elif not self._on_watched_entry(tid, task, info):
            return
        elif self._selection is not None and self._selection.watched(info.nr, info.args[0]):
            pass  # the session's, not the decoder's
        else:
            self._deliver_entry(tid, task, info)
        self._resume(tid, task)

    def _on_watched_entry(self, tid: int, task: _Task, info: backend.SyscallInfo) -> bool:
        """A call the fast path cannot keep by itself (see the module's docstring); False when
        the task is no longer ours to resume."""
        watched = self._selection.watched(info.nr, info.args[0]) if self._selection else None
        if watched == seccomp.WATCHED_INSTALLS_FILTER and self.seccomp_fast_path:
            # Decided at its exit: probes that install nothing (libseccomp's, with a NULL
            # program: EFAULT) must not slow the program down.
            task.installing_filter = task.tgid not in self._stepping_processes
        elif watched == seccomp.WATCHED_TRACEME:
            return self._on_traceme(tid, task)
        elif self._no_new_privs and info.nr in _EXEC_NUMBERS:
            self._refuse_privileged_exec(tid, task, info)
        return True

    def _refuse_privileged_exec(self, tid: int, task: _Task, info: backend.SyscallInfo) -> None:
        """Under NO_NEW_PRIVS a setuid/setgid/file-capability program would run without its
        privileges: never that. The exec fails with EPERM, and the user is told why."""
        executable = spawning.exec_target(tid, info.nr == _EXEC_NUMBERS[1], info.args)
        privileged = spawning.privileged(executable) if executable is not None else None
        if privileged is None:
            return
        backend.skip_syscall(tid, -errno_codes.EPERM)
        self._say_once(
            task.tgid,
            f"- exec of {executable}, a {privileged} program, refused (EPERM): this tracer "
            "lacks CAP_SYS_ADMIN, so its seccomp filter came with no_new_privs, under which the "
            "program would run without its privileges; trace as root",
            key=f"exec {executable}",
        )

    def _after_filter_install(self, tid: int, task: _Task) -> None:
        task.installing_filter = False
        if backend.syscall_return_value(tid) < 0 or task.tgid in self._stepping_processes:
            return
        self._stepping_processes.add(task.tgid)
        self._say_once(
            task.tgid, "installs its own seccomp filter: each of its system calls stops from now on"
        )
        for other in self._tasks.values():
            if other.tgid == task.tgid:  # SECCOMP_FILTER_FLAG_TSYNC gives it to every thread
                other.stepping = True

    def _on_traceme(self, tid: int, task: _Task) -> bool:
        if tid == self._main_pid and not self._attached:
            # Its parent is this process, which traces it already: as untraced, the call works.
            backend.skip_syscall(tid, 0)
            self._say_once(
                tid, "called PTRACE_TRACEME: its parent, kvm-conformance, traces it already"
            )
            return True
        if self.seccomp_fast_path:
            backend.skip_syscall(tid, 0)  # for now: it runs again once the task is let go
            task.release_at_exit = True
            return True
        self._say_once(tid, "called PTRACE_TRACEME: no longer traced, its parent traces it")
        backend.detach(tid)  # the call then runs untraced, and succeeds
        del self._tasks[tid]
        self._handler.on_task_exit(tid, 0)  # its end is its parent's to see, not ours
        return False

    def _release(self, tid: int, task: _Task) -> None:
        """At the exit stop of a PTRACE_TRACEME we skipped: give the task a filter that lets
        its calls through without us (release.py), rewind it to call PTRACE_TRACEME again, and
        detach, so that the call runs untraced and succeeds."""
        task.release_at_exit = False
        assert self._selection is not None
        program = self._selection.bpf_program(seccomp.SECCOMP_RET_USER_NOTIF)
        if self._released is None:
            self._released = ContinuingListeners()
        try:
            install_continuing_filter(task.tgid, tid, program, self._released)
        except (OSError, TracerError) as error:
            self._say_once(
                tid,
                f"called PTRACE_TRACEME: it cannot be let go from the fast path's filter "
                f"({error}), so it stays traced here and the call fails (EPERM) as under any "
                "tracer; --no-fast-path lets it go",
            )
            backend.skip_syscall(tid, -errno_codes.EPERM)
            self._resume(tid, task)
            return
        self._say_once(tid, "called PTRACE_TRACEME: no longer traced, its parent traces it")
        backend.rewind_syscall(tid, backend.syscall_number("ptrace"))
        backend.detach(tid)
        del self._tasks[tid]
        self._handler.on_task_exit(tid, 0)  # its end is its parent's to see, not ours

    def _fail_as_without_tracer(self, tid: int, task: _Task, info: backend.SyscallInfo) -> None:
        """The program's own filter asked for a tracer with SECCOMP_RET_TRACE: it has none of its
        own, so the call fails with ENOSYS without running, as untraced (the decoder still sees
        it, failing)."""
        name = _SYSCALL_NAMES.get(info.nr, f"system call {info.nr}")
        self._say_once(
            task.tgid,
            f"- its own seccomp filter returned SECCOMP_RET_TRACE for {name} and it has no "
            "tracer of its own: the call fails with ENOSYS, as untraced",
            key=f"trace {info.nr}",
        )
        backend.skip_syscall(tid, -errno_codes.ENOSYS)
        wanted = self._selection is not None and self._selection.wants(info.nr, info.args[1])
        if wanted and not task.stepping and not task.before_exec:
            self._deliver_entry(tid, task, info)

    def _deliver_entry(self, tid: int, task: _Task, info: backend.SyscallInfo) -> None:
        stop = SyscallStop(tid, task.tgid, info.nr, info.args, info.instruction_pointer)
        late_exits = self._late_exits
        if late_exits is not None:
            late_exits.before_entry(stop)
        if not self._handler.on_syscall_entry(stop):
            return
        if not stop.exit_can_wait or late_exits is None or task.stepping:
            task.awaiting_exit = stop
        elif not late_exits.hand_over(stop):
            task.exit_at_next_stop = stop

    def _deliver_waiting_exit(self, task: _Task, stop: SyscallStop) -> None:
        assert self._late_exits is not None
        task.exit_at_next_stop = None
        self._late_exits.deliver(stop)

    def _resume(self, tid: int, task: _Task, deliver_signal: int = 0) -> None:
        stepped = task.stepping or task.release_at_exit or task.installing_filter
        if self.seccomp_fast_path and task.awaiting_exit is None and not stepped:
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
        parent = self._tasks.get(parent_tid)
        stepping = parent is not None and parent.stepping  # a filter is inherited
        if stepping:
            self._stepping_processes.add(child_tgid)
        self._tasks[child] = _Task(tgid=child_tgid, stepping=stepping)
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
        elif self._killing:  # every tracee is being killed: so is a new one
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
        if tid == self._main_pid and self._attached:
            self.program_name = _command_of(tid)
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

    def _say_once(self, pid: int, what: str, *, key: str | None = None) -> None:
        """Tell the user, once per process, what the tracer does differently for it."""
        if (pid, key or what) not in self._said:
            self._said.add((pid, key or what))
            separator = ":" if what.startswith("- ") else ""
            _say(f"process {pid}{separator} {what.removeprefix('- ')}")

    def _start_signals(self) -> dict[int, signal.Handlers]:
        """What the program starts with for the signals we handle: ignored stays ignored across
        exec, anything handled becomes the default."""
        return {
            signum: signal.SIG_IGN if previous == signal.SIG_IGN else signal.SIG_DFL
            for signum, previous in self._previous_handlers.items()
        }

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}

    def _install_termination_handlers(self) -> dict[int, _SignalHandler]:
        if threading.current_thread() is not threading.main_thread():
            return {}  # Python delivers signals to the main thread only
        previous: dict[int, _SignalHandler] = {}
        for signum in _TERMINATION_SIGNALS:
            previous[signum] = signal.signal(signum, self._on_termination_signal)
        return previous

    def _on_termination_signal(self, signum: int, _frame: FrameType | None) -> None:
        """waitpid() is retried after this returns, so act on the tracees here.

        A spawned program handles the signal as untraced (see the module's docstring) and its
        end ends the loop; an attached process is interrupted so that each of its tasks can be
        detached at its next stop.
        """
        self._interrupted_by = signum
        if not self._tasks:
            pass  # not started yet: spawn() ends it; or ended already
        elif self._attached:
            self._detaching = True
            for tid in list(self._tasks):
                try:
                    backend.interrupt(tid)
                except TaskGoneError:
                    continue
        elif signum in self._forwarded or self._main_pid not in self._tasks:
            self._kill_all()  # the second one for the tracer alone: end it all
        elif self._program_got(signum):
            pass  # one signal to the process group: the program handles its own
        else:
            self._forwarded.add(signum)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._main_pid, signum)

    def _program_got(self, signum: int) -> bool:
        """Whether the traced program got `signum` as well: one of its tasks was stopped to
        deliver it a moment ago, is stopped for it now, or has it pending."""
        seen = self._signal_stops.get(signum)
        if seen is not None and time.monotonic() - seen < _SAME_SIGNAL_SECONDS:
            return True
        try:
            if backend.pending_signals(self._main_pid) & (1 << (signum - 1)):
                return True
        except (FileNotFoundError, ProcessLookupError):
            return False
        for tid, task in self._tasks.items():
            if task.tgid != self._main_pid:
                continue
            try:
                if backend.signal_info(tid).signo == signum:
                    return True
            except PtraceCallError:  # running, not stopped: it has no signal in hand
                continue
        return False

    def _kill_all(self) -> None:
        self._killing = True
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


def _say(message: str) -> None:
    print(f"kvm-conformance: {message}", file=sys.stderr, flush=True)


def _command_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as comm:
            return comm.read().strip()
    except (FileNotFoundError, ProcessLookupError):  # ended, or reaped as it was read
        return f"process {pid}"
