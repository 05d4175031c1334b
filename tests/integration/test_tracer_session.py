"""The tracer's process control against the real kernel: a C workload, traced and untraced."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import termios
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from conformance.model.errors import ConformanceError
from conformance.tracer import SyscallStop, TaskKind, TraceResult, TraceSession
from conformance.tracer import ptrace_backend as backend
from conformance.tracer.seccomp import TRACED_SYSCALL_NAMES

pytestmark = [pytest.mark.needs_ptrace, pytest.mark.needs_gcc]

TRACEES = Path(__file__).parent.parent / "fixtures" / "tracees"
REPOSITORY = Path(__file__).parent.parent.parent
FAKE_KVM_RUN = 0xAE80  # KVM_RUN's request number, issued on /dev/null by the workload
PAGE_SIZE = 4096
MODES = ["plain", "seccomp"]


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> str:
    executable = tmp_path_factory.mktemp("tracees") / "workload"
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-pthread", "-o", str(executable), str(TRACEES / "workload.c")],
        check=True,
    )
    return str(executable)


class Recorder:
    """Keeps what a decoder would look at: opened paths, ioctl requests, mmap shapes."""

    def __init__(self) -> None:
        self.calls: Counter[tuple[object, ...]] = Counter()
        self.exits: Counter[str] = Counter()
        self.new_tasks: Counter[TaskKind] = Counter()
        self.execs = 0
        self.ended: list[int] = []
        self.open_tasks: set[int] = set()

    def on_syscall_entry(self, stop: SyscallStop) -> bool:
        assert stop.tid in self.open_tasks, "a syscall of a task we were not told about"
        name = SYSCALL_NAMES[stop.nr]
        if name == "openat":
            self.calls[name, read_c_string(stop, stop.args[1])] += 1
        elif name == "ioctl":
            self.calls[name, stop.args[1]] += 1
        elif name == "mmap":
            self.calls[name, stop.args[1], stop.args[2], stop.args[3]] += 1
        return name in ("openat", "ioctl")

    def on_syscall_exit(self, stop: SyscallStop) -> None:
        assert stop.return_value is not None
        self.exits[SYSCALL_NAMES[stop.nr]] += 1

    def on_new_task(self, parent_tid: int, child_tid: int, kind: TaskKind) -> None:
        self.new_tasks[kind] += 1
        self.open_tasks.add(child_tid)

    def on_exec(self, tid: int) -> None:
        self.execs += 1
        self.open_tasks.add(tid)

    def on_task_exit(self, tid: int, status: int) -> None:
        self.ended.append(tid)


SYSCALL_NAMES = {backend.syscall_number(name): name for name in TRACED_SYSCALL_NAMES}


def read_c_string(stop: SyscallStop, address: int) -> str:
    # Never read across a page end: the next page may be unmapped.
    data = stop.read(address, min(256, PAGE_SIZE - address % PAGE_SIZE))
    return data.split(b"\0", 1)[0].decode()


def trace(argv: list[str], mode: str, **spawn_options: object) -> tuple[Recorder, TraceResult]:
    recorder = Recorder()
    session = TraceSession(recorder)
    session.spawn(
        argv,
        seccomp_fast_path=mode == "seccomp",
        unstopped_ioctls=[FAKE_KVM_RUN],
        **spawn_options,  # type: ignore[arg-type]
    )
    return recorder, session.run()


def run_traced_capturing(
    argv: list[str], mode: str, tmp_path: Path
) -> tuple[str, TraceResult, Recorder]:
    output = tmp_path / f"stdout-{mode}"
    with output.open("wb") as stdout:
        recorder, result = trace(argv, mode, stdout=stdout.fileno())
    return output.read_text(), result, recorder


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("arguments", "shell_status"), [(["exit", "5"], 5), (["signal"], 128 + signal.SIGTERM)]
)
def test_traced_program_prints_and_ends_as_untraced(
    workload: str, mode: str, arguments: list[str], shell_status: int, tmp_path: Path
) -> None:
    untraced = subprocess.run([workload, *arguments], check=False, capture_output=True, text=True)
    stdout, result, recorder = run_traced_capturing([workload, *arguments], mode, tmp_path)
    assert stdout == untraced.stdout
    assert result.shell_status == shell_status
    assert -untraced.returncode == result.exit_signal or untraced.returncode == result.exit_code
    assert recorder.new_tasks == {"thread": 3, "process": 2}
    assert recorder.execs == 1
    assert result.pid in recorder.ended


def test_both_modes_see_the_same_syscalls(workload: str, tmp_path: Path) -> None:
    _, _, plain = run_traced_capturing([workload, "exit", "0"], "plain", tmp_path)
    _, _, fast = run_traced_capturing([workload, "exit", "0"], "seccomp", tmp_path)
    assert plain.calls == fast.calls
    assert plain.exits == fast.exits
    assert plain.calls["openat", "/dev/kvm"] == 1
    assert plain.calls["ioctl", 0xAE00] == 1  # KVM_GET_API_VERSION
    assert plain.calls["ioctl", FAKE_KVM_RUN] == 0  # unstopped in both modes
    assert plain.calls["openat", "/dev/null"] == 1 + 3 + 1  # main, three threads, forked child


@pytest.mark.parametrize("mode", MODES)
def test_unstopped_ioctl_request_never_reaches_the_handler(workload: str, mode: str) -> None:
    recorder, result = trace([workload, "ioctls", "1000"], mode)
    assert result.exit_code == 0
    assert recorder.calls["ioctl", FAKE_KVM_RUN] == 0


def test_seccomp_mode_does_not_stop_at_unstopped_ioctls(workload: str) -> None:
    """Count the stops the kernel makes, not the ones the handler sees."""
    counts: list[int] = []
    for requests in ([FAKE_KVM_RUN], []):
        recorder = Recorder()
        session = TraceSession(recorder)
        session.spawn(
            [workload, "ioctls", "1000"], seccomp_fast_path=True, unstopped_ioctls=requests
        )
        started = time.perf_counter()
        session.run()
        counts.append(recorder.calls["ioctl", FAKE_KVM_RUN])
        assert time.perf_counter() - started < 5
    assert counts == [0, 1000]


@pytest.mark.parametrize("mode", MODES)
def test_tracee_with_its_own_seccomp_filter(workload: str, mode: str, tmp_path: Path) -> None:
    untraced = subprocess.run(
        [workload, "own-seccomp"], check=False, capture_output=True, text=True
    )
    stdout, result, recorder = run_traced_capturing([workload, "own-seccomp"], mode, tmp_path)
    assert "getppid -> -1 errno EPERM" in stdout
    assert stdout == untraced.stdout
    assert result.exit_code == 0
    assert recorder.calls["ioctl", 0xAE00] == 1


@pytest.mark.parametrize("command", ["/no/such/program", "no-such-program-anywhere"])
def test_missing_command_is_a_clear_error(command: str) -> None:
    with pytest.raises(ConformanceError, match=r"not found"):
        trace([command], "plain")


def test_exec_failure_after_fork_is_a_clear_error(tmp_path: Path) -> None:
    not_a_program = tmp_path / "not-a-program"
    not_a_program.write_bytes(b"\x7fELF garbage")
    not_a_program.chmod(0o755)
    with pytest.raises(ConformanceError, match="exec failed"):
        trace([str(not_a_program)], "plain")


def start_tracer(mode: str, argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(TRACEES / "run_traced.py"), mode, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # everything it starts shares its session id
        env={**os.environ, "PYTHONPATH": str(REPOSITORY)},
    )


def processes_in_session(session_id: int) -> Iterator[tuple[Path, list[str]]]:
    """(/proc/PID, its stat fields after the command name) of each process of the session:
    state, ppid, pgrp, session, ..., utime and stime at 11 and 12."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == session_id:
            yield entry, fields


def live_processes_in_session(session_id: int) -> list[str]:
    """Processes of the session that are not zombies (a zombie is dead; init reaps it)."""
    return [
        f"{entry.name}:{fields[0]}"
        for entry, fields in processes_in_session(session_id)
        if fields[0] != "Z"
    ]


def wait_until_session_is_empty(session_id: int, seconds: float) -> list[str]:
    deadline = time.monotonic() + seconds
    while (left := live_processes_in_session(session_id)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


@pytest.mark.parametrize("mode", MODES)
def test_sigkilled_tracer_leaves_no_tracee(workload: str, mode: str) -> None:
    chooser = random.Random(20)
    for attempt in range(20):
        tracer = start_tracer(mode, [workload, "churn"])
        # 0-0.5 s covers the tracer's start-up, the child's pre-exec window and full churn.
        time.sleep(chooser.uniform(0, 0.5))
        tracer.kill()
        tracer.communicate()
        left = wait_until_session_is_empty(tracer.pid, seconds=3)
        assert not left, f"attempt {attempt}: processes left behind: {left}"


@pytest.fixture
def ready_tracer(workload: str) -> Iterator[subprocess.Popen[str]]:
    tracer = start_tracer("seccomp", [workload, "ready"])
    yield tracer
    if tracer.poll() is None:
        tracer.kill()
        tracer.communicate()


@pytest.mark.parametrize(
    ("termination", "tracee_end"),
    [(signal.SIGTERM, 0), (signal.SIGINT, 128 + signal.SIGINT)],  # its handler; the default
)
def test_a_signal_for_the_tracer_alone_is_passed_on_to_the_tracee(
    ready_tracer: subprocess.Popen[str], termination: signal.Signals, tracee_end: int
) -> None:
    assert ready_tracer.stdout is not None
    assert ready_tracer.stdout.readline() == "ready\n"
    ready_tracer.send_signal(termination)
    _, stderr = ready_tracer.communicate(timeout=10)
    assert ready_tracer.returncode == 0, stderr
    report = json.loads(stderr.strip().splitlines()[-1].removeprefix("RESULT "))
    assert report == {"interrupted_by": termination, "shell_status": tracee_end}
    assert not wait_until_session_is_empty(ready_tracer.pid, seconds=3)


@pytest.mark.parametrize("mode", MODES)
def test_a_second_signal_for_the_tracer_alone_ends_a_tracee_that_ignores_the_first(
    mode: str,
) -> None:
    ignoring = ["sh", "-c", 'trap "" INT; echo ready; while :; do sleep 0.05; done']
    tracer = start_tracer(mode, ignoring)
    assert tracer.stdout is not None
    assert tracer.stdout.readline() == "ready\n"
    tracer.send_signal(signal.SIGINT)
    time.sleep(0.3)
    assert tracer.poll() is None, "the tracee ignores SIGINT: the trace goes on"
    tracer.send_signal(signal.SIGINT)
    _, stderr = tracer.communicate(timeout=10)
    report = json.loads(stderr.strip().splitlines()[-1].removeprefix("RESULT "))
    assert report == {"interrupted_by": signal.SIGINT, "shell_status": 128 + signal.SIGKILL}
    assert not wait_until_session_is_empty(tracer.pid, seconds=3)


def test_attach_follows_a_running_process_to_its_end(workload: str) -> None:
    tracee = subprocess.Popen([workload, "ready"], stdout=subprocess.PIPE, text=True)
    assert tracee.stdout is not None
    assert tracee.stdout.readline() == "ready\n"
    recorder = Recorder()
    recorder.open_tasks.add(tracee.pid)
    session = TraceSession(recorder)
    with pytest.warns(RuntimeWarning, match="seccomp"):
        session.attach(tracee.pid, seccomp_fast_path=True)
    assert not session.seccomp_fast_path
    os.kill(tracee.pid, signal.SIGTERM)  # its handler exits 0, through the traced signal path
    result = session.run()
    assert result.exit_code == 0
    assert recorder.ended == [tracee.pid]


def tracer_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("TracerPid:"):
            return int(line.split()[1])
    raise AssertionError("no TracerPid line")


def test_terminating_an_attached_trace_detaches_and_leaves_the_process_running(
    workload: str,
) -> None:
    tracee = subprocess.Popen([workload, "ready"], stdout=subprocess.PIPE, text=True)
    assert tracee.stdout is not None
    assert tracee.stdout.readline() == "ready\n"
    recorder = Recorder()
    session = TraceSession(recorder)
    session.attach(tracee.pid)
    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
    result = session.run()
    assert result.interrupted_by == signal.SIGTERM
    assert result.wait_status is None
    assert tracer_of(tracee.pid) == 0
    tracee.terminate()  # its handler exits 0: it still runs, untraced
    assert tracee.wait(timeout=5) == 0


def _start_full_trace(output: Path) -> subprocess.Popen[str]:
    """`kvm-conformance trace` in full mode of a guest that exits 100M times: its KVM_RUNs go
    through the compiled loop for as long as the test lets it run."""
    exits_guest = REPOSITORY / "benchmarks" / "exits_guest.py"
    return subprocess.Popen(
        [sys.executable, "-m", "conformance", "trace", "--kvm-run", "full", "-o", str(output),
         "--", sys.executable, str(exits_guest), "100000000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )  # fmt: skip


def _wait_for_the_guest_to_run(session_id: int) -> None:
    """Until the traced VMM has spent half a second of CPU time: running its guest by then."""
    deadline = time.monotonic() + 30
    while True:
        assert time.monotonic() < deadline, "the traced VMM never got to run its guest"
        for entry, fields in processes_in_session(session_id):
            try:
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            ticks = int(fields[11]) + int(fields[12])  # utime + stime
            # argv[1], not anywhere: the tracer's own command line names the guest too
            arguments = command.split(b"\0")
            is_guest = len(arguments) > 1 and arguments[1].endswith(b"exits_guest.py")
            if is_guest and ticks >= os.sysconf("SC_CLK_TCK") // 2:
                return
        time.sleep(0.05)


@pytest.mark.needs_kvm
@pytest.mark.parametrize("termination", [signal.SIGINT, signal.SIGTERM])
def test_terminating_the_tracer_inside_the_compiled_loop_ends_the_trace_and_keeps_it(
    tmp_path: Path, termination: signal.Signals
) -> None:
    output = tmp_path / "trace.txt"
    tracer = _start_full_trace(output)
    _wait_for_the_guest_to_run(tracer.pid)
    tracer.send_signal(termination)
    _, stderr = tracer.communicate(timeout=10)
    # passed on to the VMM (Python: KeyboardInterrupt, or SIGTERM's default), its end reported
    assert tracer.returncode == 128 + termination, stderr
    assert not wait_until_session_is_empty(tracer.pid, seconds=3)
    assert "KVM_RUN" in output.read_text()  # the calls merged so far were written


@pytest.mark.needs_kvm
def test_a_sigkilled_tracer_inside_the_compiled_loop_leaves_no_tracee(tmp_path: Path) -> None:
    output = tmp_path / "trace.txt"
    tracer = _start_full_trace(output)
    _wait_for_the_guest_to_run(tracer.pid)
    tracer.kill()
    tracer.communicate()
    assert not wait_until_session_is_empty(tracer.pid, seconds=3)


@pytest.mark.parametrize("mode", MODES)
def test_terminal_ioctls_are_never_stopped_at(mode: str) -> None:
    """TCGETS and TIOCGWINSZ (type 'T') run unstopped in both modes; other ioctls stop."""
    code = (
        "import fcntl, os, termios\n"
        "fd = os.open(os.devnull, os.O_RDWR)\n"
        "for request in (termios.TCGETS, termios.TIOCGWINSZ, 0xAE00):\n"
        "    try:\n"
        "        fcntl.ioctl(fd, request, bytearray(64))\n"
        "    except OSError:\n"
        "        pass\n"
    )
    recorder, result = trace([sys.executable, "-c", code], mode)
    assert result.shell_status == 0
    requests = {key[1] for key in recorder.calls if key[0] == "ioctl"}
    assert 0xAE00 in requests  # KVM_GET_API_VERSION's number, on a file that is not KVM's
    assert not requests & {termios.TCGETS, termios.TIOCGWINSZ}
