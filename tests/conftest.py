"""Skips for tests that need a resource, and the CI rule that nothing may skip.

A test marked needs_kvm / needs_ptrace / needs_qemu / needs_gcc is skipped only when that
resource is really absent here. Under KVM_CONFORMANCE_FORBID_SKIPS=1 (set by .ci/run) a skipped
test fails the session: on the CI machine every resource exists, so a skip means a broken setup.
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

import pytest


@functools.cache
def _kvm_missing() -> str | None:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as error:
        return f"/dev/kvm is not usable here: {error.strerror}"
    os.close(fd)
    return None


@functools.cache
def _ptrace_missing() -> str | None:
    scope = Path("/proc/sys/kernel/yama/ptrace_scope")
    if scope.exists() and scope.read_text().strip() == "3":
        return "ptrace is disabled (kernel.yama.ptrace_scope=3)"
    return None


@functools.cache
def _qemu_missing() -> str | None:
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"
    return None


@functools.cache
def _gcc_missing() -> str | None:
    if shutil.which("gcc") is None:
        return "gcc is not installed"
    if not Path("/usr/include/linux/kvm.h").exists():
        return "the kernel headers (linux/kvm.h) are not installed"
    return None


_RESOURCE_CHECKS = {
    "needs_kvm": _kvm_missing,
    "needs_ptrace": _ptrace_missing,
    "needs_qemu": _qemu_missing,
    "needs_gcc": _gcc_missing,
}


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker, missing in _RESOURCE_CHECKS.items():
        if item.get_closest_marker(marker) is not None:
            reason = missing()
            if reason is not None:
                pytest.skip(reason)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("KVM_CONFORMANCE_FORBID_SKIPS") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        reporter.write_line(
            f"KVM_CONFORMANCE_FORBID_SKIPS: {len(skipped)} test(s) skipped on a machine that "
            "must run them all",
            red=True,
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
