"""The tracer's first promise, as one contract: a traced program behaves exactly as untraced.

Each tracee of the corpus (tests/fixtures/tracees/contract/, one concern per program, table
TRACEES below) runs natively, then under `kvm-conformance trace` in every mode a user can pick
(MODES: full with the eBPF recorder, full with a stop per KVM_RUN and the compiled loop,
summary, off, stepping without the seccomp filter, and `-p` attach). Each run must give the
same stdout, the same stderr apart from the tracer's own `kvm-conformance:` lines, and the
same end (exit code, or the signal that killed it: the signals the program saw are printed by
the programs themselves). The tracer's own lines are checked too: only the ones every trace
may print, plus what the tracee's row says the tracer must say (what it cannot follow), and
the trace must hold the row's calls. Ctrl-C rows get SIGINT sent to the process group, as a
terminal sends it, once they print "ready".

Pointer cases (NULL, unmapped, PROT_NONE arguments: the decoding tests' programs) belong in
TRACEES too, one row each: `Tracee("bad_pointers", "../bad_pointers")` runs
tests/fixtures/tracees/bad_pointers.c.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.needs_kvm,
    pytest.mark.needs_ptrace,
    pytest.mark.needs_gcc,
    pytest.mark.needs_bpf,
]

_CORPUS = Path(__file__).parents[1] / "fixtures" / "tracees" / "contract"
_NOBODY = 65534
_TIMEOUT = 30


@dataclass(frozen=True)
class Mode:
    name: str
    options: tuple[str, ...]
    fast_path: bool = True
    attach: bool = False
    records_kvm_run: bool = True


MODES = [
    Mode("full-ebpf", ()),
    Mode("full-loop", ("--no-ebpf",)),
    Mode("summary", ("--kvm-run", "summary"), records_kvm_run=False),
    Mode("off", ("--kvm-run", "off"), records_kvm_run=False),
    Mode("no-fast-path", ("--no-fast-path",), fast_path=False),
    Mode("attach", (), fast_path=False, attach=True),
]

# What the tracer may print in any run of a mode, and nothing else unless a row says so.
_ALWAYS = {
    "attach": [r"attaching to \d+: every system call stops .*"],
}


READY_LINE = "ready-line"
HANDLES_SIGINT = "handles-sigint"


@dataclass(frozen=True)
class Tracee:
    """One program of the corpus and what its traced runs must show besides the native run's
    stdout, stderr and end."""

    name: str
    program: str  # the .c file's stem, in the corpus ("../NAME" for the tracer's other tests')
    arguments: tuple[str, ...] = ()
    trace_shows: tuple[str, ...] = ("KVM_GET_API_VERSION",)
    # The tracer's lines this row's runs must print (and may: no others), per mode or for all.
    notices: Callable[[Mode], list[str]] = lambda _mode: []
    # Ctrl-C: SIGINT to the process group once it prints "ready" (READY_LINE) or once its
    # executable runs with a SIGINT handler in place (HANDLES_SIGINT).
    ctrl_c: str | None = None
    executable: str | None = None  # instead of the corpus's `program`
    expected_end: int = 0  # the native run's end, 128 + signal for a signal: checked too


def _traceme_child_notices(_mode: Mode) -> list[str]:
    return [r"process \d+ called PTRACE_TRACEME: no longer traced, its parent traces it"]


def _traceme_self_notices(mode: Mode) -> list[str]:
    if mode.attach:  # detached before its first KVM call
        return [r"process \d+ called PTRACE_TRACEME: no longer traced, its parent traces it",
                r"traceme ended with status 0 without opening /dev/kvm: .*"]  # fmt: skip
    return [r"process \d+ called PTRACE_TRACEME: its parent, kvm-conformance, traces it already"]


def _own_filter_notices(mode: Mode) -> list[str]:
    if not mode.fast_path:
        return []
    return [
        r"process \d+ installs its own seccomp filter: each of its system calls stops from now on",
        *[rf"process \d+: its own seccomp filter returned SECCOMP_RET_TRACE for {call} and it "
          r"has no tracer of its own: the call fails with ENOSYS, as untraced"
          for call in ("ioctl", "getppid")],
    ]  # fmt: skip


TRACEES = [
    Tracee(
        "immediate_exit",
        "immediate_exit",
        trace_shows=("KVM_RUN", "KVM_SET_REGS"),
    ),
    Tracee("fork_200_children", "fork_children", trace_shows=("KVM_CREATE_VM",)),
    Tracee("vcpus_64", "vcpus_64", trace_shows=("KVM_CREATE_VCPU, 63",)),
    Tracee("traceme_child", "traceme", ("child",), notices=_traceme_child_notices),
    Tracee("traceme_self", "traceme", ("self",), trace_shows=(), notices=_traceme_self_notices),
    Tracee(
        "own_seccomp_filter",
        "own_seccomp",
        trace_shows=("KVM_CHECK_EXTENSION", "EACCES"),
        notices=_own_filter_notices,
    ),
    Tracee("signals", "signals", expected_end=128 + signal.SIGTERM),
    Tracee("closes_fds", "closes_fds", trace_shows=("KVM_RUN", "KVM_CREATE_VM")),
    Tracee("setuid_exec", "setuid_exec", ("{setuid_copy}",), expected_end=4),
    Tracee("ctrl_c", "sigint", trace_shows=("KVM_RUN",), ctrl_c=READY_LINE),
    # Bad pointer arguments and KVM_RUN's control bytes: the decoding tests' programs.
    Tracee("bad_pointers", "../bad_pointers", trace_shows=("KVM_SET_CPUID2", "EFAULT")),
    Tracee("run_controls", "../run_controls", trace_shows=("KVM_RUN",)),
]
_QEMU = shutil.which("qemu-system-x86_64")
QEMU_TRACEES = [
    Tracee(
        "qemu_ctrl_c",
        "qemu",
        ("-accel", "kvm", "-m", "64", "-display", "none", "-nodefaults", "-no-user-config",
         "-S"),
        trace_shows=("KVM_CREATE_VCPU",),
        ctrl_c=HANDLES_SIGINT,
        executable=_QEMU,
    ),
]  # fmt: skip


@dataclass
class Run:
    stdout: str
    stderr: str
    end: int  # exit code, or 128 + the signal
    tracer_lines: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The corpus compiled, plus `setuid_copy`: setuid_exec owned by nobody, mode 4755."""
    directory = tmp_path_factory.mktemp("contract")
    # The contract's own programs, and the tracer's other test programs that rows run.
    sources = {*_CORPUS.glob("*.c"), *(_CORPUS / f"{t.program}.c" for t in TRACEES)}
    for source in sorted(source for source in sources if source.exists()):
        subprocess.run(
            ["gcc", "-O1", "-Wall", "-Werror", "-pthread", "-o", str(directory / source.stem),
             str(source)],
            check=True,
        )  # fmt: skip
    copy = directory / "setuid_copy"
    shutil.copy(directory / "setuid_exec", copy)
    os.chown(copy, _NOBODY, _NOBODY)
    os.chmod(copy, 0o4755)
    return directory


_native_runs: dict[str, Run] = {}


def _argv(tracee: Tracee, corpus: Path) -> list[str]:
    arguments = [a.format(setuid_copy=corpus / "setuid_copy") for a in tracee.arguments]
    return [tracee.executable or str(corpus / Path(tracee.program).name), *arguments]


def _run(command: list[str], tracee: Tracee, *, before_start: Callable[[int], None] | None = None
         ) -> Run:  # fmt: skip
    """Run `command` in a process group of its own to its end; Ctrl-C it for a ctrl_c row."""
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        if before_start is not None:
            before_start(process.pid)
        if tracee.ctrl_c == READY_LINE:
            assert process.stdout is not None
            ready = process.stdout.readline()
            assert ready == "ready\n", ready + process.communicate(timeout=_TIMEOUT)[1]
            os.killpg(process.pid, signal.SIGINT)
            rest, stderr = process.communicate(timeout=_TIMEOUT)
            stdout = ready + rest
        elif tracee.ctrl_c == HANDLES_SIGINT:
            executable = command[-len(tracee.arguments) - 1]
            _wait_until(lambda: _catches_sigint(process.pid, executable), what="a SIGINT handler")
            os.killpg(process.pid, signal.SIGINT)
            stdout, stderr = process.communicate(timeout=_TIMEOUT)
        else:
            stdout, stderr = process.communicate(timeout=_TIMEOUT)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    end = process.returncode if process.returncode >= 0 else 128 - process.returncode
    return Run(stdout, stderr, end)


def _native(tracee: Tracee, corpus: Path) -> Run:
    if tracee.name not in _native_runs:
        native = _run(_argv(tracee, corpus), tracee)
        assert native.end == tracee.expected_end, native
        _native_runs[tracee.name] = native
    return _native_runs[tracee.name]


def _split_tracer_lines(run: Run) -> Run:
    ours = [line for line in run.stderr.splitlines() if line.startswith("kvm-conformance: ")]
    theirs = [line for line in run.stderr.splitlines(keepends=True)
              if not line.startswith("kvm-conformance: ")]  # fmt: skip
    return Run(run.stdout, "".join(theirs), run.end, ours)


def _tracer(mode: Mode, output: Path) -> list[str]:
    return [sys.executable, "-m", "conformance", "trace", "-o", str(output), *mode.options]


def _traced(tracee: Tracee, mode: Mode, corpus: Path, output: Path) -> Run:
    argv = _argv(tracee, corpus)
    if not mode.attach:
        return _split_tracer_lines(_run([*_tracer(mode, output), "--", *argv], tracee))
    # -p: the program stops itself before its exec (a shell's `kill -STOP $$`) until the tracer
    # has seized it, so that the whole program is traced; its parent here sees its end.
    tracers: list[subprocess.Popen[str]] = []

    def attach(pid: int) -> None:
        _wait_until(lambda: _state(pid) == "T", what=f"process {pid} to stop")
        tracers.append(subprocess.Popen(
            [*_tracer(mode, output), "-p", str(pid)], stderr=subprocess.PIPE, text=True
        ))  # fmt: skip
        _wait_until(lambda: _tracer_pid(pid) != 0, what=f"a tracer of {pid}")
        os.kill(pid, signal.SIGCONT)

    stopped = ["sh", "-c", 'kill -STOP $$; exec "$@"', "sh", *argv]
    run = _run(stopped, tracee, before_start=attach)
    (tracer,) = tracers
    _, tracer_stderr = tracer.communicate(timeout=_TIMEOUT)
    assert tracer.returncode == run.end, tracer_stderr
    traced = _split_tracer_lines(run)
    traced.tracer_lines = _split_tracer_lines(Run("", tracer_stderr, 0)).tracer_lines
    assert _split_tracer_lines(Run("", tracer_stderr, 0)).stderr == "", tracer_stderr
    return traced


def _wait_until(condition: Callable[[], bool], *, what: str) -> None:
    deadline = time.monotonic() + _TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"waited {_TIMEOUT} s for {what}"
        time.sleep(0.005)


def _status_field(pid: int, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == name:
            return value.strip()
    raise AssertionError(f"no {name} in /proc/{pid}/status")


def _catches_sigint(session_id: int, executable: str) -> bool:
    """Whether a process of the session runs `executable` with a handler for SIGINT."""
    for pid in _left_in_session(session_id):
        try:
            if os.readlink(f"/proc/{pid}/exe") != executable:
                continue
            caught = int(_status_field(pid, "SigCgt"), 16)
        except (OSError, AssertionError):
            continue
        if caught & 1 << (signal.SIGINT - 1):
            return True
    return False


def _state(pid: int) -> str:
    return _status_field(pid, "State")[:1]


def _tracer_pid(pid: int) -> int:
    return int(_status_field(pid, "TracerPid"))


@pytest.mark.parametrize("mode", MODES, ids=lambda mode: mode.name)
@pytest.mark.parametrize(
    "tracee",
    [
        *TRACEES,
        *[pytest.param(tracee, marks=pytest.mark.needs_qemu) for tracee in QEMU_TRACEES],
    ],
    ids=lambda tracee: tracee.name,
)
def test_traced_behaves_as_untraced(
    tracee: Tracee, mode: Mode, corpus: Path, tmp_path: Path
) -> None:
    native = _native(tracee, corpus)
    output = tmp_path / "trace.txt"

    traced = _traced(tracee, mode, corpus, output)

    assert (traced.stdout, traced.stderr, traced.end) == (
        native.stdout,
        native.stderr,
        native.end,
    ), traced.tracer_lines
    expected = [*_ALWAYS.get(mode.name, []), *tracee.notices(mode)]
    unexplained = [line.removeprefix("kvm-conformance: ") for line in traced.tracer_lines]
    for pattern in expected:
        matching = [line for line in unexplained if re.fullmatch(pattern, line)]
        assert matching, f"the tracer did not say {pattern!r}: {traced.tracer_lines}"
        unexplained.remove(matching[0])
    assert unexplained == []
    trace = output.read_text()
    for call in tracee.trace_shows:
        if call == "KVM_RUN" and not mode.records_kvm_run:
            continue
        assert call in trace, f"{call!r} not in the trace"


def _left_in_session(session_id: int) -> list[int]:
    left = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == session_id and fields[0] != "Z":
            left.append(int(entry.name))
    return left


# From 0.1 s: before that, Python's own start-up (site) is running, none of our code yet.
@pytest.mark.parametrize("delay", [0.05 * step for step in range(2, 12)])
def test_ctrl_c_while_the_tracer_starts_ends_as_the_program_would(
    delay: float, corpus: Path, tmp_path: Path
) -> None:
    """Ctrl-C at any moment of the tracer's start-up (modules loading, the eBPF recorder, the
    spawn): no traceback, and the end is the program's: SIGINT's status before its handler was
    in place, its own "terminating on signal 2" and 0 after; nothing left running."""
    process = subprocess.Popen(
        [*_tracer(MODES[0], tmp_path / "trace.txt"), "--", str(corpus / "sigint")],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    time.sleep(delay)
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=_TIMEOUT)
    assert "Traceback" not in stderr
    end = process.returncode if process.returncode >= 0 else 128 - process.returncode
    if end == 0:
        assert stdout.endswith("terminating on signal 2\n")
    else:
        assert end == 128 + signal.SIGINT, (stdout, stderr)
    _wait_until(lambda: not _left_in_session(process.pid), what="the session to empty")


def test_attaching_to_a_process_traced_already_names_its_tracer_and_leaves_it(
    corpus: Path, tmp_path: Path
) -> None:
    """A task has one tracer: `trace -p` of a process that strace traces says so (exit 2) and
    leaves the process running, still strace's."""
    traced = subprocess.Popen(
        ["strace", "-o", os.devnull, "sleep", "30"], stdin=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        _wait_until(lambda: _traced_sleep(traced.pid) is not None, what="strace's sleep")
        sleep = _traced_sleep(traced.pid)
        assert sleep is not None
        tracer = subprocess.run(
            [*_tracer(MODES[-1], tmp_path / "trace.txt"), "-p", str(sleep)],
            capture_output=True, text=True, timeout=_TIMEOUT, check=False,
        )  # fmt: skip
        assert tracer.returncode == 2, tracer.stderr
        assert f"process {sleep} is traced already, by {traced.pid} (strace)" in tracer.stderr
        assert "Traceback" not in tracer.stderr
        assert _state(sleep) == "S"
        assert _tracer_pid(sleep) == traced.pid
    finally:
        os.killpg(traced.pid, signal.SIGKILL)
        traced.wait()


def _traced_sleep(strace_pid: int) -> int | None:
    """The sleep that strace runs, once strace traces it."""
    for pid in _left_in_session(strace_pid):
        if pid != strace_pid and _tracer_pid(pid) == strace_pid:
            return pid
    return None


def test_without_cap_sys_admin_a_privileged_program_never_runs_unprivileged(
    corpus: Path, tmp_path: Path
) -> None:
    """A tracer without CAP_SYS_ADMIN must install its filter with no_new_privs, under which a
    setuid program keeps the caller's uid: as the command, the program gets no filter and runs
    as untraced (nobody, /dev/kvm refused); exec'd later, it is refused with EPERM, said on
    stderr, rather than run as root."""
    without = ["setpriv", "--bounding-set=-sys_admin", *_tracer(MODES[0], tmp_path / "t.txt")]
    copy = str(corpus / "setuid_copy")

    as_command = subprocess.run(
        [*without, "--", copy, copy, "after"], capture_output=True, text=True,
        timeout=_TIMEOUT, check=False,
    )  # fmt: skip
    native = subprocess.run([copy, copy, "after"], capture_output=True, text=True, check=False)
    assert (as_command.stdout, as_command.returncode) == (native.stdout, 4)
    assert f"{copy} is a setuid program and this tracer lacks CAP_SYS_ADMIN" in as_command.stderr

    exec_later = subprocess.run(
        [*without, "--", str(corpus / "setuid_exec"), copy], capture_output=True, text=True,
        timeout=_TIMEOUT, check=False,
    )  # fmt: skip
    assert "after exec" not in exec_later.stdout
    assert exec_later.returncode == 2  # the program's own end for a failed exec
    assert "execl: Operation not permitted" in exec_later.stderr
    assert re.search(rf"process \d+: exec of {re.escape(copy)}, a setuid program, refused",
                     exec_later.stderr)  # fmt: skip
