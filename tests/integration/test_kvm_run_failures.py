"""The tracefs instance behind one-stop KVM_RUN tracing: private, and never left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.tracer.kvm_run_failures import KvmRunFailures

pytestmark = [pytest.mark.needs_kvm, pytest.mark.needs_ptrace]

_INSTANCES = Path("/sys/kernel/tracing/instances")


def _started() -> KvmRunFailures:
    failures, why_not = KvmRunFailures.start()
    assert failures is not None, why_not
    return failures


def test_the_instance_is_removed_when_closed() -> None:
    failures = _started()
    mine = _INSTANCES / f"kvm-conformance-{os.getpid()}"
    assert mine.is_dir()
    failures.close()
    assert not mine.exists()


def test_an_instance_left_by_a_killed_tracer_is_removed_by_the_next_one() -> None:
    # A process that has ended: its pid names a stale instance, as a SIGKILLed tracer leaves.
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    stale = _INSTANCES / f"kvm-conformance-{ended.stdout.strip()}"
    stale.mkdir()
    failures = _started()
    try:
        assert not stale.exists()
    finally:
        failures.close()


def test_failures_are_per_thread_and_an_ended_thread_leaves_none_behind() -> None:
    """Two failing KVM_RUNs (EINTR) of one thread: the first is asked about, then the thread's
    end drops the second, which must not be given to a later thread with the same tid."""
    script = (
        "import fcntl, mmap, os, sys\n"
        "from conformance.abi import _generated as abi\n"
        "kvm = os.open('/dev/kvm', os.O_RDWR)\n"
        "vm = fcntl.ioctl(kvm, abi.IOCTL_NUMBERS['KVM_CREATE_VM'], 0)\n"
        "vcpu = fcntl.ioctl(vm, abi.IOCTL_NUMBERS['KVM_CREATE_VCPU'], 0)\n"
        "size = fcntl.ioctl(kvm, abi.IOCTL_NUMBERS['KVM_GET_VCPU_MMAP_SIZE'], 0)\n"
        "mmap.mmap(vcpu, size)[abi.kvm_run.immediate_exit.offset] = 1\n"
        "sys.stdin.readline()\n"
        "for _ in range(2):\n"
        "    try:\n"
        "        fcntl.ioctl(vcpu, abi.IOCTL_NUMBERS['KVM_RUN'], 0)\n"
        "    except OSError as error:\n"
        "        print(error.errno)\n"
    )
    failures = _started()
    try:
        child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)  # fmt: skip
        failures.follow(child.pid)  # before the child runs KVM_RUN: it waits for a line
        out, _ = child.communicate("go\n")
        assert out.split() == ["4", "4"]  # EINTR twice
        assert failures.return_value(child.pid) == -4
        failures.forget(child.pid)
        assert failures.return_value(child.pid) == 0
    finally:
        failures.close()
