"""The tracer under bad input from its tracee (issue 19): pointers the kernel cannot use, absurd
counts, KVM_RUN calls that fail before the guest, and the tracer's own failure. Each program is
a small C tracee run natively and traced in every mode; the traced run must print what the
native one prints and exit as it does, and the trace must say what the kernel saw."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytest
import yaml

from conformance.model.events import Event, Ioctl
from conformance.tracer import TraceOutcome, attach, trace
from conformance.tracer.errors import TracerFailure

REPO = Path(__file__).resolve().parents[2]
TRACEES = REPO / "tests" / "fixtures" / "tracees"
pytestmark = [pytest.mark.needs_kvm, pytest.mark.needs_ptrace, pytest.mark.needs_gcc]

# name -> trace() keywords: the eBPF recorder (full mode's default), the compiled loop (one stop
# per KVM_RUN), stepping through every syscall, and the two modes that leave KVM_RUN unstopped.
MODES: dict[str, dict[str, Any]] = {
    "full": {},
    "full-no-ebpf": {"ebpf": False},
    "full-no-fast-path": {"fast_path": False},
    "summary": {"kvm_run": "summary"},
    "off": {"kvm_run": "off"},
}
_FIXED_STRUCTS = [
    "KVM_SET_REGS",
    "KVM_SET_SREGS",
    "KVM_SET_USER_MEMORY_REGION",
    "KVM_GET_REGS",
    "KVM_GET_SREGS",
    "KVM_GET_FPU",
    "KVM_GET_CLOCK",
]
_STRADDLE = 16  # bytes of the struct before the PROT_NONE page (bad_pointers.c)


def _build(tmp_path_factory: pytest.TempPathFactory, name: str) -> str:
    binary = tmp_path_factory.mktemp("tracees") / name
    subprocess.run(
        ["gcc", "-O1", "-Wall", "-Werror", "-o", str(binary), str(TRACEES / f"{name}.c")],
        check=True,
    )
    return str(binary)


@pytest.fixture(scope="module")
def bad_pointers(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _build(tmp_path_factory, "bad_pointers")


@pytest.fixture(scope="module")
def run_controls(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _build(tmp_path_factory, "run_controls")


def _native(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def _traced(
    argv: list[str], on_event: Callable[[Event], None] | None = None, **modes: Any
) -> tuple[TraceOutcome, list[Event], str]:
    events: list[Event] = []

    def record(event: Event) -> None:
        events.append(event)
        if on_event is not None:
            on_event(event)

    read_end, write_end = os.pipe()
    try:
        outcome = trace(argv, record, stdout=write_end, **modes)
    finally:
        os.close(write_end)
    with os.fdopen(read_end) as output:
        return outcome, events, output.read()


def _calls(events: list[Event], printed: str) -> list[tuple[str, str, int, Ioctl]]:
    """(name, case, printed errno, event) for each line the program printed, in order."""
    lines = [line.split() for line in printed.splitlines() if "errno=" in line]
    ioctls = [event for event in events if isinstance(event, Ioctl) and event.name in _NAMES]
    ioctls = ioctls[-len(lines) :]  # the calls after CREATE_VM and CREATE_VCPU
    assert len(ioctls) == len(lines)
    return [
        (name, case, int(errno.removeprefix("errno=")), event)
        for (name, case, errno), event in zip(lines, ioctls, strict=True)
    ]


_NAMES = frozenset(
    [
        "KVM_SET_CPUID2",
        "KVM_SET_REGS",
        "KVM_SET_SREGS",
        "KVM_SET_MSRS",
        "KVM_SET_USER_MEMORY_REGION",
        "KVM_GET_REGS",
        "KVM_GET_SREGS",
        "KVM_GET_FPU",
        "KVM_GET_CLOCK",
        "KVM_GET_SUPPORTED_CPUID",
        "KVM_GET_MSRS",
        "KVM_GET_MSR_INDEX_LIST",
    ]
)


@pytest.mark.parametrize("mode", MODES)
def test_bad_pointers_are_recorded_and_the_program_runs_as_untraced(
    bad_pointers: str, mode: str
) -> None:
    native = _native([bad_pointers])
    assert native.returncode == 0 and native.stdout.endswith("done\n")
    outcome, events, printed = _traced([bad_pointers], **MODES[mode])
    assert (outcome.exit_status, printed) == (0, native.stdout)
    calls = _calls(events, printed)
    assert {name for name, *_ in calls} == _NAMES  # 12 ioctls: 5 read, 4 written, 3 both
    for name, case, errno, event in calls:
        assert (event.name, event.errno or 0) == (name, errno), (case, event)
        if case in ("null", "unmapped", "prot_none"):
            assert event.readable == 0 and event.inputs is None and event.outputs is None
            assert event.arg != 0 or case == "null"
        elif case == "straddling" and name in _FIXED_STRUCTS:
            assert event.readable == _STRADDLE and event.errno == 14
    partial = {(name, case): event for name, case, _, event in calls}
    regs = partial["KVM_SET_REGS", "straddling"].inputs
    assert regs == {"rax": 0x1111111111111111, "rbx": 0x1111111111111111}  # the whole fields
    region = partial["KVM_SET_USER_MEMORY_REGION", "straddling"].inputs
    assert region == {"slot": 0x11111111, "flags": 0x11111111, "guest_phys_addr": (1 << 64) // 15}
    # Absurd counts: the header only, as the kernel refuses before reading an entry.
    assert partial["KVM_SET_MSRS", "nmsrs_huge"].inputs == {"nmsrs": 0xFFFFFFFF, "pad": 0}
    assert partial["KVM_GET_MSRS", "nmsrs_huge"].inputs == {"nmsrs": 0xFFFFFFFF, "pad": 0}
    assert partial["KVM_SET_CPUID2", "nent_huge"].inputs == {"nent": 100000, "padding": 0}
    answered = partial["KVM_GET_SUPPORTED_CPUID", "nent_huge"].outputs
    assert answered is not None and isinstance(answered["entries"], list)
    count = answered["nent"]
    assert isinstance(count, int) and 0 < len(answered["entries"]) == count <= 256
    # Entries running into the PROT_NONE page: the header and the first entry, read whole.
    edge = partial["KVM_SET_MSRS", "entries_straddling"]
    assert edge.errno == 14 and edge.readable == 0x20
    assert edge.inputs == {
        "nmsrs": 2, "pad": 0, "entries": [{"index": 0x174, "reserved": 0, "data": 0x10}]
    }  # fmt: skip


def test_bad_pointers_through_an_attached_tracer(bad_pointers: str) -> None:
    native = _native([bad_pointers])
    tracee, output, starter = _waiting_until_traced(bad_pointers)
    events: list[Event] = []
    starter.start()
    with pytest.warns(RuntimeWarning):
        outcome = attach(tracee.pid, events.append)
    starter.join()
    printed = output.read()
    assert outcome.exit_status == 0 and "ready\n" + printed == "ready\n" + native.stdout
    for name, case, errno, event in _calls(events, printed):
        assert (event.name, event.errno or 0) == (name, errno), (case, event)
        if case in ("null", "unmapped", "prot_none"):
            assert event.readable == 0


def _waiting_until_traced(
    bad_pointers: str,
) -> tuple[subprocess.Popen[str], IO[str], threading.Thread]:
    """bad_pointers started in its `wait` mode (it prints `ready` and waits for a line), its
    stdout, and a thread that, once started, lets it go when a tracer has attached to it."""
    tracee = subprocess.Popen(
        [bad_pointers, "wait"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert tracee.stdin is not None and tracee.stdout is not None
    assert tracee.stdout.readline() == "ready\n"
    stdin = tracee.stdin

    def go_once_traced() -> None:
        deadline = time.monotonic() + 10
        while _tracer_of(tracee.pid) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        stdin.write("go\n")
        stdin.close()

    return tracee, tracee.stdout, threading.Thread(target=go_once_traced)


def _tracer_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("TracerPid:"):
            return int(line.split()[1])
    return 0


def _kvm_conformance(*args: str, tool: str = "conformance") -> subprocess.CompletedProcess[str]:
    module = "conformance" if tool == "conformance" else "conformance.cli.record_trace"
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_trace_shows_a_null_pointer_as_strace_does(bad_pointers: str, tmp_path: Path) -> None:
    native = _native([bad_pointers])
    text = _kvm_conformance("trace", "--", bad_pointers)
    assert (text.returncode, text.stdout) == (0, native.stdout)
    lines = text.stderr.splitlines()
    assert "ioctl(5<vcpu0>, KVM_SET_CPUID2, NULL) = -1 EFAULT (Bad address)" in lines
    assert "ioctl(5<vcpu0>, KVM_GET_REGS, NULL) = -1 EFAULT (Bad address)" in lines
    # A failed call whose struct the kernel was to write shows the pointer, as strace does.
    assert any(
        line.startswith("ioctl(5<vcpu0>, KVM_GET_MSRS, 0x")
        and line.endswith("E2BIG (Argument list too long)")
        for line in lines
    )
    raw = tmp_path / "raw.yaml"
    result = _kvm_conformance("trace", "--format", "yaml", "-o", str(raw), "--", bad_pointers)
    assert (result.returncode, result.stdout) == (0, native.stdout)
    [thread] = yaml.safe_load(raw.read_text())["threads"].values()
    [null_cpuid, *_] = [call for call in thread if call.get("req") == "KVM_SET_CPUID2"]
    assert (null_cpuid["arg"], null_cpuid["errno"]) == ("NULL", "EFAULT")
    assert "readable" not in null_cpuid and "in" not in null_cpuid
    region = [call for call in thread if call.get("req") == "KVM_SET_USER_MEMORY_REGION"][-1]
    assert region["readable"] == _STRADDLE and region["errno"] == "EFAULT"
    # The raw trace reads back, lints and diffs without a crash; the normalized one says NULL.
    assert _kvm_conformance("lint", str(raw)).returncode == 0
    document = tmp_path / "normalized.yaml"
    recorded = _kvm_conformance("vmm", "-o", str(document), "--", bad_pointers, tool="record")
    assert (recorded.returncode, recorded.stdout) == (0, native.stdout), recorded.stderr
    normalized = yaml.safe_load(document.read_text())["threads"]["main"]
    cpuid = [call for call in normalized if call.get("req") == "KVM_SET_CPUID2"]
    assert [call.get("arg") for call in cpuid[:3]] == ["NULL", "unreadable", "unreadable"]
    assert all(call["errno"] == "EFAULT" for call in cpuid[:3])
    for other in (str(raw), str(document)):
        compared = _kvm_conformance("diff", str(document), other)
        assert compared.returncode in (0, 1) and "Traceback" not in compared.stderr
    linted = _kvm_conformance(
        "lint", "--trace-output", str(tmp_path / "l.yaml"), "--", bad_pointers
    )
    # lint keeps its stdout for findings: the program's output comes on stderr, all of it.
    assert linted.returncode == 0 and native.stdout in linted.stderr


def _runs(events: list[Event]) -> list[Ioctl]:
    return [event for event in events if isinstance(event, Ioctl) and event.name == "KVM_RUN"]


_IO, _HLT, _INTR = 2, 5, 10  # KVM_EXIT_* (linux/kvm.h)


@pytest.mark.parametrize("mode", ["full", "full-no-ebpf", "full-no-fast-path"])
def test_a_run_that_never_reached_the_guest_records_no_exit(run_controls: str, mode: str) -> None:
    native = _native([run_controls])
    outcome, events, printed = _traced([run_controls], **MODES[mode])
    assert (outcome.exit_status, printed) == (0, native.stdout)
    if mode == "full":  # every KVM_RUN recorded by the eBPF programs, none stopped at
        assert outcome.ebpf_kvm_run and outcome.recorded_calls == 8
    elif mode == "full-no-ebpf":  # the compiled loop took every run after the first
        assert outcome.one_stop_kvm_run and outcome.compiled_loop_calls == 7
    runs = _runs(events)
    assert [run.errno for run in runs] == [None, 4, 4, None, 4, None, None, 4]
    reasons = [run.run_exit["exit_reason"] if run.run_exit else None for run in runs]
    assert reasons == [_IO, None, None, _IO, None, _IO, _HLT, _INTR]
    controls = (
        [(run.run_entry or {}).get("immediate_exit", 0) for run in runs],
        [(run.run_entry or {}).get("request_interrupt_window", 0) for run in runs],
    )
    assert controls == ([0, 1, 1, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0, 1, 0])
    # The IO-in answer is read at the failed call and again at the run that takes it.
    assert [run.run_entry.get("io") if run.run_entry else None for run in runs] == [
        None, None, None, None, {"data": b"Z"}, {"data": b"Z"}, None, None
    ]  # fmt: skip


@pytest.mark.parametrize("mode", ["summary", "off"])
def test_run_controls_untraced_kvm_run_modes(run_controls: str, mode: str) -> None:
    native = _native([run_controls])
    outcome, _, printed = _traced([run_controls], **MODES[mode])
    assert (outcome.exit_status, printed) == (0, native.stdout)


def test_the_comparison_compares_the_control_bytes(run_controls: str, tmp_path: Path) -> None:
    document = tmp_path / "runs.yaml"
    recorded = _kvm_conformance("vmm", "-o", str(document), "--", run_controls, tool="record")
    assert recorded.returncode == 0, recorded.stderr
    text = document.read_text()
    assert "in: {request_interrupt_window: 0, immediate_exit: 1}, errno: EINTR, repeat: 2}" in text
    assert (
        "in: {request_interrupt_window: 1, immediate_exit: 0}, exit: {reason: KVM_EXIT_HLT}" in text
    )
    changed = tmp_path / "changed.yaml"
    changed.write_text(text.replace("request_interrupt_window: 1", "request_interrupt_window: 0"))
    compared = _kvm_conformance("diff", str(document), str(changed))
    assert compared.returncode == 1 and "request_interrupt_window" in compared.stdout


@pytest.mark.parametrize("mode", MODES)
def test_the_tracers_own_failure_leaves_the_program_running(bad_pointers: str, mode: str) -> None:
    native = _native([bad_pointers])
    seen = 0

    def fail_at_the_tenth_call(event: Event) -> None:
        nonlocal seen
        seen += isinstance(event, Ioctl)
        if seen == 10:
            raise OSError(28, "No space left on device")

    read_end, write_end = os.pipe()
    try:
        with pytest.raises(TracerFailure) as failure:
            trace([bad_pointers], fail_at_the_tenth_call, stdout=write_end, **MODES[mode])
    finally:
        os.close(write_end)
    with os.fdopen(read_end) as output:
        assert output.read() == native.stdout  # traced or not, the program printed everything
    assert failure.value.exit_status == 125
    assert "No space left on device" in str(failure.value) and "status 0" in str(failure.value)


def test_a_tracer_failure_exits_125_and_says_so(bad_pointers: str) -> None:
    native = _native([bad_pointers])
    result = _kvm_conformance("trace", "-o", "/dev/full", "-s", "4096", "-v", "--", bad_pointers)
    assert (result.returncode, result.stdout) == (125, native.stdout)
    assert "kvm-conformance: the tracer failed:" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_attached_tracers_failure_detaches_and_the_program_runs_on(bad_pointers: str) -> None:
    native = _native([bad_pointers])
    tracee, output, starter = _waiting_until_traced(bad_pointers)

    def fail_at_the_first_ioctl(event: Event) -> None:
        if isinstance(event, Ioctl):
            raise OSError(28, "No space left on device")

    starter.start()
    with pytest.warns(RuntimeWarning), pytest.raises(TracerFailure) as failure:
        attach(tracee.pid, fail_at_the_first_ioctl)
    starter.join()
    assert "was detached and runs on untraced" in str(failure.value)
    assert output.read() == native.stdout  # every line, untraced after the failure
    assert tracee.wait(timeout=10) == 0
