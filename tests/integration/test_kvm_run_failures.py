"""The tracefs instances behind one-stop KVM_RUN tracing: one tracer's at a time, reused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.tracer.kvm_run_failures import KvmRunFailures

pytestmark = [pytest.mark.needs_kvm, pytest.mark.needs_ptrace]


# Python lines making `vcpu`, whose KVM_RUN fails with EINTR at once (immediate_exit is set).
_VCPU_THAT_EXITS_AT_ONCE = (
    "kvm = os.open('/dev/kvm', os.O_RDWR)\n"
    "vm = fcntl.ioctl(kvm, abi.IOCTL_NUMBERS['KVM_CREATE_VM'], 0)\n"
    "vcpu = fcntl.ioctl(vm, abi.IOCTL_NUMBERS['KVM_CREATE_VCPU'], 0)\n"
    "size = fcntl.ioctl(kvm, abi.IOCTL_NUMBERS['KVM_GET_VCPU_MMAP_SIZE'], 0)\n"
    "page = mmap.mmap(vcpu, size)\n"
    "page[abi.kvm_run.immediate_exit.offset] = 1\n"
)


def _started() -> KvmRunFailures:
    failures, why_not = KvmRunFailures.start()
    assert failures is not None, why_not
    return failures


def _filter(instance: Path) -> str:
    return (instance / "events/kvm/kvm_userspace_exit/filter").read_text()


def _enabled(instance: Path) -> bool:
    return (instance / "events/kvm/kvm_userspace_exit/enable").read_text().strip() == "1"


def test_an_instance_is_one_tracer_s_at_a_time_and_left_disabled_for_the_next() -> None:
    first, second = _started(), _started()
    try:
        assert first.instance != second.instance  # the first one's is locked
        first.follow(os.getpid())
        assert _enabled(first.instance)
        assert f"common_pid == {os.getpid()}" in _filter(first.instance)
    finally:
        first.close()
        second.close()
    assert not _enabled(first.instance)
    third = _started()
    try:
        assert third.instance == first.instance  # reused, not created anew
    finally:
        third.close()


def test_an_instance_a_killed_tracer_held_is_taken_over_with_nothing_left_in_it() -> None:
    """SIGKILL releases the dead tracer's lock; the next one disables the event, drops what
    the ring holds (a failure the dead tracer never read) and filters on its own tasks."""
    code = (
        "import fcntl, mmap, os, signal\n"
        "from conformance.abi import _generated as abi\n"
        "from conformance.tracer.kvm_run_failures import KvmRunFailures\n"
        "failures, _ = KvmRunFailures.start()\n"
        "failures.follow(os.getpid())\n"
        "print(failures.instance, os.getpid(), flush=True)\n"
        f"{_VCPU_THAT_EXITS_AT_ONCE}"
        "try:\n"
        "    fcntl.ioctl(vcpu, abi.IOCTL_NUMBERS['KVM_RUN'], 0)\n"
        "except InterruptedError:\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=False)  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    instance, dead_pid = killed.stdout.split()
    left = Path(instance)
    assert _enabled(left)  # it died holding it, enabled, one failure (EINTR) unread:
    assert f"-{dead_pid} " in (left / "trace").read_text()  # (reading `trace` consumes nothing)
    taken = _started()
    try:
        assert taken.instance == left and not _enabled(left)
        assert taken.return_value(int(dead_pid)) == 0
        taken.follow(os.getpid())
        assert f"common_pid == {os.getpid()}" in _filter(left)
        assert f"common_pid == {dead_pid}" not in _filter(left)
    finally:
        taken.close()


def test_failures_are_per_thread_and_an_ended_thread_leaves_none_behind() -> None:
    """Two failing KVM_RUNs (EINTR) of one thread: the first is asked about, then the thread's
    end drops the second, which must not be given to a later thread with the same tid."""
    script = (
        "import fcntl, mmap, os, sys\n"
        "from conformance.abi import _generated as abi\n"
        f"{_VCPU_THAT_EXITS_AT_ONCE}"
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
