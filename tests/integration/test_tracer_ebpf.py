"""The eBPF recorder (KVM_RUN unstopped, every call recorded in the kernel) gives exactly the
normalized trace of one stop per KVM_RUN (the compiled loop, or Python for QEMU's coalesced
MMIO ring): for every scenario, a C VMM with IO/MMIO answers, two vCPU threads (and one thread
switching between two vCPUs), a forking VMM, each KVM_RUN failure kind and QEMU running
tiny-bios. Pinned and without ASLR where it matters, as test_tracer_fastpath.py does.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_tracer_fastpath import (
    _QEMU,
    _TRACEES,
    _scenario,
    assert_same_but_run_to_run_values,
    normalized,
)

from conformance.qemu_scenarios import qemu_scenario
from conformance.vmm.machine import SCENARIOS

pytestmark = [pytest.mark.needs_kvm, pytest.mark.needs_ptrace]


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
