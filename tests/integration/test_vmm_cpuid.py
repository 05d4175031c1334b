"""The vCPU's CPUID must not depend on which host CPU answered KVM_GET_SUPPORTED_CPUID."""

from __future__ import annotations

import os
from typing import Any

import pytest

from conformance.vmm import cpuid
from conformance.vmm.kvm import Kvm


def _cpuid_on_host_cpu(host_cpu: int, apic_id: int) -> list[tuple[int, ...]]:
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {host_cpu})
    try:
        with Kvm() as kvm:
            entries: Any = cpuid.for_vcpu(kvm.supported_cpuid(), apic_id)
    finally:
        os.sched_setaffinity(0, before)
    return [(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx) for e in entries]


@pytest.mark.needs_kvm
def test_cpuid_is_the_same_whichever_host_cpu_asked() -> None:
    host_cpus = sorted(os.sched_getaffinity(0))
    answers = {cpu: _cpuid_on_host_cpu(cpu, apic_id=0) for cpu in host_cpus}
    assert len({tuple(answer) for answer in answers.values()}) == 1


@pytest.mark.needs_kvm
def test_cpuid_carries_the_vcpus_apic_id() -> None:
    entries = {(f, i): (eax, ebx, edx) for f, i, _, eax, ebx, _, edx in _cpuid_on_host_cpu(0, 5)}
    assert entries[(0x1, 0)][1] >> 24 == 5
    for (function, _), (eax, _, edx) in entries.items():
        if function in (0xB, 0x1F):
            assert edx == 5
        if function == 0x8000001E:
            assert eax == 5
