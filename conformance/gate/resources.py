"""What this host lacks for tracing a VMM: /dev/kvm, ptrace, QEMU, a compiler with KVM headers.

Each check returns None when the resource is usable, or a one-line reason (with the fix, where
there is one) when it is not. The pytest plugin skips marked tests with that reason, and
`kvm-conformance check` reports it as an environment error. Results are cached: a host does not
grow a /dev/kvm during one run.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType


@functools.cache
def kvm_missing() -> str | None:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as error:
        return f"/dev/kvm is not usable here: {error.strerror}"
    os.close(fd)
    return None


@functools.cache
def ptrace_missing() -> str | None:
    scope = Path("/proc/sys/kernel/yama/ptrace_scope")
    if scope.exists() and scope.read_text().strip() == "3":
        return "ptrace is disabled (kernel.yama.ptrace_scope=3)"
    return None


@functools.cache
def qemu_missing() -> str | None:
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"
    return None


@functools.cache
def gcc_missing() -> str | None:
    if shutil.which("gcc") is None:
        return "gcc is not installed"
    if not Path("/usr/include/linux/kvm.h").exists():
        return "the kernel headers (linux/kvm.h) are not installed"
    return None


@functools.cache
def bpf_missing() -> str | None:
    """Whether the tracer's eBPF recorder loads here (bpf(2) rights, the raw syscall
    tracepoints, the verifier): it is tried."""
    from conformance.tracer.bpf_kvm_run import KvmRunRecorder  # noqa: PLC0415 - costs ~10 ms

    recorder, why_not = KvmRunRecorder.start()
    if recorder is not None:
        recorder.close()
    return why_not


@dataclass(frozen=True, slots=True)
class Requirement:
    description: str  # what a test marked with it needs, as `pytest --markers` shows it
    missing: Callable[[], str | None]


# Marker name -> what it requires. The names are the pytest markers; they are public API.
REQUIREMENTS: Mapping[str, Requirement] = MappingProxyType(
    {
        "needs_kvm": Requirement("needs a usable /dev/kvm", kvm_missing),
        "needs_ptrace": Requirement("needs permission to ptrace child processes", ptrace_missing),
        "needs_qemu": Requirement("needs qemu-system-x86_64", qemu_missing),
        "needs_gcc": Requirement("needs gcc and the kernel headers (linux/kvm.h)", gcc_missing),
        "needs_bpf": Requirement(
            "needs eBPF on tracepoints (root: CAP_BPF, CAP_PERFMON)", bpf_missing
        ),
    }
)
