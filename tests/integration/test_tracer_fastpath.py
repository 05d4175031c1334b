"""The seccomp fast path sees exactly what stepping through every syscall sees.

Each program is traced twice, with the in-kernel filter (fast path: in full mode one stop per
KVM_RUN, its exit read at the thread's next stop) and without it (plain path: two stops), and
the normalized traces must be byte-identical: our VMM core's scenarios, a C VMM with
IO/MMIO answers, a VMM that forks, and QEMU (threads). `off` and `summary` must equal `full`
once KVM_RUN calls (and summary's counters) are left out. Runs are pinned to one CPU (KVM's
CPUID answers carry the APIC id of the CPU that ran the call) and QEMU runs without ASLR.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from conformance.cli import main as cli
from conformance.compare.regression import compare_documents
from conformance.model.events import Event, Ioctl, KvmRunMode, KvmRunSummary
from conformance.model.scenarios import SCENARIOS
from conformance.normalize.normalizer import Normalizer
from conformance.qemu.scenarios import qemu_scenario
from conformance.snapshot.store import dump_document, load_document
from conformance.tracer import attach, kvm_run_failures, kvm_run_loop, trace

pytestmark = [pytest.mark.needs_kvm, pytest.mark.needs_ptrace]

_TRACEES = Path(__file__).parent.parent / "fixtures" / "tracees"
_QEMU = [
    "setarch", "x86_64", "--addr-no-randomize",
    "qemu-system-x86_64", "-accel", "kvm", "-m", "1G", "-nographic", "-nodefaults", "-S",
    "-monitor", "stdio",
]  # fmt: skip
# exits-100k steps 100,000 KVM_RUNs twice per trace in full mode: its fast/plain comparison
# runs with KVM_RUN unstopped ("off"), which still compares every other call it makes.
_SLOW_IN_FULL = frozenset({"exits-100k"})


def _without_kvm_run(event: Event) -> bool:
    is_run = isinstance(event, Ioctl) and event.name == "KVM_RUN"
    return not (is_run or isinstance(event, KvmRunSummary))


def normalized(
    argv: Sequence[str],
    *,
    fast_path: bool,
    kvm_run: KvmRunMode = "full",
    keep: Callable[[Event], bool] = lambda event: True,
    stdin: bytes = b"",
    compiled_loop: bool | None = None,
    compiled_share: float = 0.0,
    ebpf: bool = False,
) -> str:
    """The normalized trace, headed by the program's exit status. `compiled_loop`: whether the
    fast path's KVM_RUN stops must (True: at least `compiled_share` of the calls) or must not
    (False: none) have gone through the compiled loop. `ebpf`: full mode's KVM_RUNs recorded
    by the eBPF recorder (which must be usable), else stopped at (one stop per call)."""
    normalizer = Normalizer({"tool": "test"})
    events: list[Event] = []
    read_end, write_end = os.pipe()
    os.write(write_end, stdin)
    os.close(write_end)
    try:
        with open(os.devnull, "w") as devnull:
            outcome = trace(
                argv,
                events.append,
                kvm_run=kvm_run,
                fast_path=fast_path,
                pin=True,
                ebpf=ebpf,
                stdin=read_end,
                stdout=devnull.fileno(),
            )
    finally:
        os.close(read_end)
    assert outcome.fast_path_used == fast_path
    assert outcome.kvm_run_mode == kvm_run
    # Every fast-path full trace here reads KVM_RUN exits with one stop per call, or none.
    late = fast_path and kvm_run == "full"
    assert outcome.ebpf_kvm_run == (late and ebpf), outcome.ebpf_unavailable
    assert outcome.one_stop_kvm_run == (late and not ebpf), outcome.one_stop_unavailable
    if compiled_loop is not None and outcome.one_stop_kvm_run:
        runs = sum(e.repeat for e in events if isinstance(e, Ioctl) and e.name == "KVM_RUN")
        assert (outcome.compiled_loop_calls > 0) == compiled_loop
        assert not compiled_loop or outcome.compiled_loop_calls >= compiled_share * runs
    assert outcome.opened_kvm, outcome.message
    for event in events:
        if keep(event):
            normalizer.add(event)
    # The exit status is part of what must not change (exits-100k's guest ends with status 1).
    return f"exit status {outcome.exit_status}\n{dump_document(normalizer.finish())}"


def assert_same_but_run_to_run_values(fast: str, plain: str) -> None:
    """Compare as the regression check does: every call and input field, kernel answers
    (`out:`, e.g. KVM_GET_CLOCK's clock) and what is not a VMM decision (clocks, padding) aside."""
    (fast_status, fast_yaml), (plain_status, plain_yaml) = (t.split("\n", 1) for t in (fast, plain))
    assert fast_status == plain_status
    comparison = compare_documents(
        load_document(plain_yaml, "plain.yaml"),
        load_document(fast_yaml, "fast.yaml"),
        scenario="qemu",
    )
    assert comparison.ok, comparison.differences[:5]


def _scenario(name: str) -> list[str]:
    return [sys.executable, "-m", "conformance", "run", name]


@pytest.fixture(scope="module")
def c_vmm(tmp_path_factory: pytest.TempPathFactory) -> str:
    binary = tmp_path_factory.mktemp("tracees") / "kvm_calls"
    subprocess.run(
        ["gcc", "-O1", "-Wall", "-o", str(binary), str(_TRACEES / "kvm_calls.c")], check=True
    )
    return str(binary)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_fast_path_equals_plain_path_on_every_scenario(scenario: str) -> None:
    mode: KvmRunMode = "off" if scenario in _SLOW_IN_FULL else "full"
    plain = normalized(_scenario(scenario), fast_path=False, kvm_run=mode)
    # A scenario that runs its guest does it through the compiled loop.
    runs_guest = "req: KVM_RUN" in plain
    fast = normalized(_scenario(scenario), fast_path=True, kvm_run=mode, compiled_loop=runs_guest)
    assert fast == plain
    assert "req: KVM_CREATE_VM" in fast


@pytest.mark.needs_gcc
def test_fast_path_equals_plain_path_with_io_and_mmio_answers(c_vmm: str) -> None:
    fast = normalized([c_vmm], fast_path=True, compiled_loop=True)
    assert fast == normalized([c_vmm], fast_path=False)
    assert "KVM_EXIT_MMIO" in fast


def test_fast_path_equals_plain_path_for_a_vmm_that_forks() -> None:
    argv = [sys.executable, str(_TRACEES / "forking_vmm.py")]
    fast = normalized(argv, fast_path=True)
    assert fast == normalized(argv, fast_path=False)
    assert "KVM_CREATE_VCPU" in fast and "KVM_CHECK_EXTENSION" in fast


@pytest.mark.needs_qemu
def test_fast_path_equals_plain_path_on_qemu() -> None:
    fast = normalized(_QEMU, fast_path=True, stdin=b"quit\n")
    assert_same_but_run_to_run_values(fast, normalized(_QEMU, fast_path=False, stdin=b"quit\n"))
    assert "KVM_CREATE_VCPU" in fast


@pytest.mark.parametrize("scenario", ["hello", "tiny-bios"])
@pytest.mark.parametrize("mode", ["off", "summary"])
def test_off_and_summary_equal_full_but_for_kvm_run(scenario: str, mode: KvmRunMode) -> None:
    full = normalized(_scenario(scenario), fast_path=True, keep=_without_kvm_run)
    other = normalized(_scenario(scenario), fast_path=True, kvm_run=mode, keep=_without_kvm_run)
    assert other == full


@pytest.mark.needs_qemu
def test_qemu_summary_equals_full_but_for_kvm_run() -> None:
    full = normalized(_QEMU, fast_path=True, stdin=b"quit\n", keep=_without_kvm_run)
    summary = normalized(
        _QEMU, fast_path=True, kvm_run="summary", stdin=b"quit\n", keep=_without_kvm_run
    )
    assert_same_but_run_to_run_values(summary, full)


@pytest.mark.needs_qemu
def test_a_vmm_with_its_own_seccomp_sandbox_runs_and_is_traced() -> None:
    """QEMU -sandbox on installs its own filter on top of ours; both apply, it still works."""
    events: list[Event] = []
    read_end, write_end = os.pipe()
    os.write(write_end, b"quit\n")
    os.close(write_end)
    try:
        with open(os.devnull, "w") as devnull:
            outcome = trace(
                [*_QEMU, "-sandbox", "on"], events.append, stdin=read_end, stdout=devnull.fileno()
            )
    finally:
        os.close(read_end)
    assert outcome.exit_status == 0 and outcome.fast_path_used
    names = {event.name for event in events if isinstance(event, Ioctl)}
    assert {"KVM_CREATE_VM", "KVM_CREATE_VCPU", "KVM_SET_USER_MEMORY_REGION"} <= names


def test_attach_falls_back_to_the_plain_path_and_says_so() -> None:
    tracee = subprocess.Popen(
        [sys.executable, "-c", "import sys; print('ready', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert tracee.stdin is not None and tracee.stdout is not None
    assert tracee.stdout.readline() == "ready\n"
    # EOF on its stdin ends the tracee once we are attached and waiting for it.
    threading.Timer(0.5, tracee.stdin.close).start()
    with pytest.warns(RuntimeWarning, match="seccomp"):
        outcome = attach(tracee.pid, lambda event: None)
    assert not outcome.fast_path_used and outcome.exit_status == 0


def test_one_stop_kvm_run_reports_every_failure_as_two_stops_do(tmp_path: Path) -> None:
    """Fast path, full mode: KVM_RUN's errno from the tracepoint (EINTR, EINVAL...) or from the
    exit stop asked for when KVM refuses before it (argument 1, another process's vCPU)."""
    argv = [sys.executable, str(_TRACEES / "failing_runs.py")]
    errnos: dict[bool, list[int]] = {}
    for fast_path in (True, False):
        events: list[Event] = []
        printed = tmp_path / f"printed-{fast_path}"
        with printed.open("w") as stdout:
            outcome = trace(argv, events.append, fast_path=fast_path, ebpf=False,
                            stdout=stdout.fileno())  # fmt: skip
        assert outcome.exit_status == 0
        assert outcome.one_stop_kvm_run == fast_path, outcome.one_stop_unavailable
        runs = [e for e in events if isinstance(e, Ioctl) and e.name == "KVM_RUN"]
        errnos[fast_path] = [run.errno or 0 for run in runs]
        assert errnos[fast_path] == [int(word) for word in printed.read_text().split()]
    assert errnos[True] == errnos[False]
    assert errnos[True][:2] == [errno.EINTR, errno.EINVAL]
    assert errnos[True][3:] == [errno.EINVAL, errno.EIO]


@pytest.mark.needs_qemu
def test_fast_path_equals_plain_path_on_qemu_running_a_guest() -> None:
    """QEMU's vCPU thread runs tiny-bios to its isa-debug-exit: KVM_RUN exits read one stop per
    call on a thread of a multi-threaded VMM, the last one by the thread that exits."""
    argv = [*_QEMU[:3], *qemu_scenario("tiny-bios").argv("qemu-system-x86_64")]
    # QEMU registers coalesced MMIO zones: their ring is read by Python, not the compiled loop.
    fast = normalized(argv, fast_path=True, compiled_loop=False)
    assert_same_but_run_to_run_values(fast, normalized(argv, fast_path=False))
    assert "KVM_EXIT_IO" in fast


def test_the_compiled_loop_merges_identical_exits_and_loses_none() -> None:
    """exits-100k in full mode: 100,000 identical IO exits reach Python as a few events whose
    repeat counts add up, then the debug-exit one; the normalized trace is the plain path's."""
    argv = [sys.executable, str(Path(__file__).parents[2] / "benchmarks" / "exits_guest.py"),
            "100000"]  # fmt: skip
    events: list[Event] = []
    with open(os.devnull, "w") as devnull:
        outcome = trace(argv, events.append, pin=True, ebpf=False, stdout=devnull.fileno())
    assert outcome.compiled_loop_calls >= 100_000 and outcome.exit_status == 1
    runs = [e for e in events if isinstance(e, Ioctl) and e.name == "KVM_RUN"]
    ports: Counter[int] = Counter()
    for run in runs:
        assert run.run_exit is not None and run.errno is None
        io = run.run_exit["io"]
        assert isinstance(io, dict) and isinstance(io["port"], int)
        ports[io["port"]] += run.repeat
    assert ports == {0x80: 100_000, 0xF4: 1}
    assert len(runs) < 10  # merged: not an event per exit
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    last = max(events, key=lambda e: e.seq)
    assert last.seq == len(events) + sum(run.repeat - 1 for run in runs)  # no number skipped


def test_without_the_compiled_loop_the_python_loop_traces_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A build without the C library (a source tree never built) still takes one stop per
    KVM_RUN, in Python, and records what the plain path does."""
    monkeypatch.setattr(kvm_run_loop, "_library_path", lambda: None)
    fast = normalized(_scenario("hello"), fast_path=True, compiled_loop=False)
    assert fast == normalized(_scenario("hello"), fast_path=False)
    assert "req: KVM_RUN" in fast


@pytest.mark.needs_gcc
@pytest.mark.parametrize("layout", ["a thread each", "one-thread"])
def test_two_vcpus_in_the_compiled_loop_equal_the_plain_path(layout: str, tmp_path: Path) -> None:
    """Two vCPUs run by two threads (their KVM_RUN stops interleave in the compiled loop, which
    takes nearly all of them), or by one thread switching between them (each switch goes
    through Python): identical exits merge, changing ones do not, nothing is lost or given to
    the other vCPU."""
    binary = tmp_path / "two_vcpus"
    subprocess.run(["gcc", "-O1", "-Wall", "-pthread", "-o", str(binary),
                    str(_TRACEES / "two_vcpus.c")], check=True)  # fmt: skip
    one_thread = layout == "one-thread"
    argv = [str(binary), *(["one-thread"] if one_thread else [])]
    fast = normalized(argv, fast_path=True, compiled_loop=not one_thread, compiled_share=0.99)
    assert fast == normalized(argv, fast_path=False)
    assert fast.startswith("exit status 0\n")  # both vCPUs saw the exits they made


def test_without_tracefs_full_mode_takes_two_stops_and_says_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(kvm_run_failures, "_TRACEFS", tmp_path / "no-tracefs")
    events: list[Event] = []
    with open(os.devnull, "w") as devnull:
        outcome = trace(_scenario("hello"), events.append, ebpf=False, stdout=devnull.fileno())
    assert not outcome.one_stop_kvm_run and outcome.compiled_loop_calls == 0
    assert outcome.one_stop_unavailable is not None
    assert "tracefs is not usable" in outcome.one_stop_unavailable
    assert any(isinstance(e, Ioctl) and e.name == "KVM_RUN" and e.run_exit for e in events)
    status = cli.main(
        ["trace", "--no-ebpf", "-o", str(tmp_path / "trace.txt"), "--", *_scenario("hello")]
    )
    assert status == 0
    assert "two stops per KVM_RUN: tracefs is not usable" in capsys.readouterr().err
