"""The eBPF recorder (KVM_RUN unstopped, every call recorded in the kernel) gives exactly the
normalized trace of one stop per KVM_RUN (the compiled loop, or Python for QEMU's coalesced
MMIO ring): for every scenario, a C VMM with IO/MMIO answers, two vCPU threads (and one thread
switching between two vCPUs), a forking VMM, each KVM_RUN failure kind and QEMU running
tiny-bios. Pinned and without ASLR where it matters, as test_tracer_fastpath.py does.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from test_tracer_fastpath import (
    _QEMU,
    _TRACEES,
    _scenario,
    assert_same_but_run_to_run_values,
    normalized,
)

from conformance.model.events import Event, Ioctl
from conformance.model.scenarios import SCENARIOS
from conformance.qemu.scenarios import qemu_scenario
from conformance.tracer import TracerError, bpf_kvm_run, trace
from conformance.tracer.bpf_kvm_run import KvmRunRecordsLost

pytestmark = [pytest.mark.needs_kvm, pytest.mark.needs_ptrace, pytest.mark.needs_bpf]


def _both(argv: list[str], stdin: bytes = b"") -> tuple[str, str]:
    recorded = normalized(argv, fast_path=True, ebpf=True, stdin=stdin)
    stopped = normalized(argv, fast_path=True, ebpf=False, stdin=stdin)
    return recorded, stopped


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_the_recorder_equals_one_stop_per_kvm_run_on_every_scenario(scenario: str) -> None:
    recorded, stopped = _both(_scenario(scenario))
    assert recorded == stopped


@pytest.mark.needs_gcc
def test_the_recorder_equals_one_stop_with_io_and_mmio_answers(tmp_path: Path) -> None:
    binary = tmp_path / "kvm_calls"
    subprocess.run(["gcc", "-O1", "-Wall", "-o", str(binary), str(_TRACEES / "kvm_calls.c")],
                   check=True)  # fmt: skip
    recorded, stopped = _both([str(binary)])
    assert recorded == stopped
    assert "KVM_EXIT_MMIO" in recorded


def test_the_recorder_equals_one_stop_for_a_vmm_that_forks() -> None:
    recorded, stopped = _both([sys.executable, str(_TRACEES / "forking_vmm.py")])
    assert recorded == stopped


@pytest.mark.needs_gcc
@pytest.mark.parametrize("layout", ["a thread each", "one-thread"])
def test_the_recorder_equals_one_stop_for_two_vcpus(layout: str, tmp_path: Path) -> None:
    binary = tmp_path / "two_vcpus"
    subprocess.run(["gcc", "-O1", "-Wall", "-pthread", "-o", str(binary),
                    str(_TRACEES / "two_vcpus.c")], check=True)  # fmt: skip
    recorded, stopped = _both([str(binary), *(["one-thread"] if layout == "one-thread" else [])])
    assert recorded == stopped
    assert recorded.startswith("exit status 0\n")


def test_the_recorder_reports_every_kvm_run_failure_as_a_stop_does() -> None:
    recorded, stopped = _both([sys.executable, str(_TRACEES / "failing_runs.py")])
    assert recorded == stopped
    assert "EINTR" in recorded and "EIO" in recorded


@pytest.mark.needs_qemu
def test_the_recorder_equals_one_stop_on_qemu_running_a_guest() -> None:
    argv = [*_QEMU[:3], *qemu_scenario("tiny-bios").argv("qemu-system-x86_64")]
    recorded, stopped = _both(argv)
    assert_same_but_run_to_run_values(recorded, stopped)
    assert "KVM_EXIT_IO" in recorded and "coalesced_mmio" in recorded


def test_a_vms_first_kvm_run_is_seen_by_the_vmm_once_with_its_own_result() -> None:
    """The recorder stops a VM's first KVM_RUN with a signal to digest the memory before the
    guest runs, and runs the interrupted call again. A first call made with immediate_exit set
    fails with EINTR untraced: traced, the VMM sees that one EINTR (its exit status says what
    each call returned), the memory digest is the stopped trace's, and so is everything else."""
    argv = [sys.executable, str(_TRACEES / "first_run_interrupted.py")]
    untraced = subprocess.run(argv, check=False).returncode
    recorded, stopped = _both(argv)
    assert recorded == stopped
    assert recorded.startswith(f"exit status {untraced}\n")
    assert untraced == 10 * errno.EINTR + errno.EINTR
    assert "guest_memory" in recorded and recorded.count("errno: EINTR") == stopped.count(
        "errno: EINTR"
    )


def test_a_half_full_ring_stops_the_vmm_until_the_tracer_has_read_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """hello's 48 distinct exits do not fit in a ring of two pages: the recorder stops the VMM
    (SIGSTOP at a KVM_RUN's return) each time it is half full, the tracer reads it and resumes
    the VMM without the signal; nothing is lost and the trace is the same."""
    monkeypatch.setattr(bpf_kvm_run, "RING_BYTES", 2 * 4096)
    events: list[Event] = []
    with open(os.devnull, "w") as devnull:
        outcome = trace(_scenario("hello"), events.append, pin=True, stdout=devnull.fileno())
    assert outcome.ebpf_kvm_run and outcome.throttle_stops > 0 and outcome.exit_status == 0
    recorded = normalized(_scenario("hello"), fast_path=True, ebpf=True)
    monkeypatch.undo()
    assert recorded == normalized(_scenario("hello"), fast_path=True, ebpf=False)


@pytest.mark.needs_qemu
def test_records_the_ring_cannot_hold_are_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A VM with a coalesced MMIO zone (QEMU) makes records of a page and more: a one-page
    ring holds none. The drop counter says so and the trace fails, naming the loss."""
    monkeypatch.setattr(bpf_kvm_run, "RING_BYTES", 4096)
    argv = [*_QEMU[:3], *qemu_scenario("tiny-bios").argv("qemu-system-x86_64")]
    with open(os.devnull, "w") as devnull, pytest.raises(KvmRunRecordsLost, match=r"lost [1-9]"):
        trace(argv, lambda event: None, pin=True, stdout=devnull.fileno())


def test_without_ebpf_rights_the_trace_stops_at_each_kvm_run_and_says_why_once(
    tmp_path: Path,
) -> None:
    """As root without CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN (setpriv drops them from the
    bounding set), bpf(2) is refused: `trace` says so once and takes a stop per KVM_RUN,
    recording the same trace."""
    outputs = {}
    for denied in (True, False):
        output = tmp_path / f"denied-{denied}.yaml"
        prefix = ["setpriv", "--bounding-set", "-bpf,-perfmon,-sys_admin"] if denied else []
        completed = subprocess.run(
            [*prefix, sys.executable, "-m", "conformance.cli.record_trace", "vmm",
             "-o", str(output), "--", *_scenario("hello")],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert completed.returncode == 0, completed.stderr
        said = completed.stderr.count("no eBPF recorder, a stop per KVM_RUN")
        assert said == (1 if denied else 0), completed.stderr
        assert "eBPF is not permitted" in completed.stderr or not denied
        outputs[denied] = output.read_text()
    assert outputs[True] == outputs[False]
    assert "KVM_EXIT_IO" in outputs[True]


def test_a_task_in_another_pid_namespace_is_refused_by_name() -> None:
    """The programs name tasks as the tracer's PID namespace does; a VMM that forks into a new
    one (unshare --pid --fork) could not be recorded: the trace says so instead of missing its
    KVM_RUNs. Without the recorder it is traced."""
    argv = ["unshare", "--pid", "--fork", *_scenario("hello")]
    with open(os.devnull, "w") as devnull:
        with pytest.raises(TracerError, match="PID namespace of its own"):
            trace(argv, lambda event: None, stdout=devnull.fileno())
        outcome = trace(argv, lambda event: None, ebpf=False, stdout=devnull.fileno())
    assert outcome.exit_status == 0 and outcome.one_stop_kvm_run


def test_a_tracer_in_a_pid_namespace_of_its_own_records_as_a_stop_does() -> None:
    """In a container the tracer's PID namespace is not the initial one: the programs then name
    tasks as that namespace does (bpf_get_ns_current_pid_tgid; in the initial one they take the
    kernel's own ids, which are the same there), and record what a stop per KVM_RUN sees."""
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "from test_tracer_fastpath import _scenario, normalized; "
        "recorded = normalized(_scenario('hello'), fast_path=True, ebpf=True); "
        "stopped = normalized(_scenario('hello'), fast_path=True, ebpf=False); "
        "print(recorded == stopped, 'KVM_EXIT_IO' in recorded)"
    )
    completed = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", script,
         str(Path(__file__).parent)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert completed.stdout.split() == ["True", "True"], completed.stderr[-2000:]


def test_the_recorder_merges_identical_exits_in_the_kernel_and_loses_none() -> None:
    """exits-100k: 100,000 identical IO exits stay one group in the kernel, reach Python as a
    few events whose repeat counts add up, then the debug-exit one."""
    argv = [sys.executable, str(Path(__file__).parents[2] / "benchmarks" / "exits_guest.py"),
            "100000"]  # fmt: skip
    events: list[Event] = []
    with open(os.devnull, "w") as devnull:
        outcome = trace(argv, events.append, pin=True, stdout=devnull.fileno())
    assert outcome.ebpf_kvm_run and outcome.exit_status == 1
    assert outcome.recorded_calls == 100_001 and outcome.throttle_stops == 0
    runs = [e for e in events if isinstance(e, Ioctl) and e.name == "KVM_RUN"]
    ports: Counter[int] = Counter()
    for run in runs:
        assert run.run_exit is not None and run.errno is None
        io = run.run_exit["io"]
        assert isinstance(io, dict) and isinstance(io["port"], int)
        ports[io["port"]] += run.repeat
    assert ports == {0x80: 100_000, 0xF4: 1}
    assert len(runs) <= 4
