"""The CPUID a vCPU is given: the leaves KVM supports, with the vCPU's own APIC ID in them.

KVM_GET_SUPPORTED_CPUID fills the APIC-ID fields from whichever host CPU ran the ioctl, so
passing its answer straight to KVM_SET_CPUID2 hands the guest an identity that depends on host
scheduling, and makes two runs of the same VMM differ. Every VMM rewrites those fields from the
vCPU index, as QEMU does (target/i386/cpu.c, cpu_x86_cpuid). The fields (Intel SDM vol. 2A,
CPUID; AMD APM vol. 3, appendix E):
- leaf 0x1 EBX[31:24]: initial APIC ID;
- leaves 0xB and 0x1F EDX: x2APIC ID of the current logical processor;
- leaf 0x8000001E EAX: extended APIC ID (AMD).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_LEAF_FEATURES = 0x1
_X2APIC_TOPOLOGY_LEAVES = frozenset({0xB, 0x1F})
_AMD_EXTENDED_APIC_ID_LEAF = 0x8000001E
_INITIAL_APIC_ID_SHIFT = 24
_INITIAL_APIC_ID_MASK = 0xFF << _INITIAL_APIC_ID_SHIFT


def for_vcpu(supported: Sequence[Any], apic_id: int) -> Sequence[Any]:
    """Set the APIC-ID fields of `supported` (kvm_cpuid_entry2 items) to `apic_id`, in place."""
    for entry in supported:
        if entry.function == _LEAF_FEATURES:
            entry.ebx = (entry.ebx & ~_INITIAL_APIC_ID_MASK) | (
                (apic_id & 0xFF) << _INITIAL_APIC_ID_SHIFT
            )
        elif entry.function in _X2APIC_TOPOLOGY_LEAVES:
            entry.edx = apic_id
        elif entry.function == _AMD_EXTENDED_APIC_ID_LEAF:
            entry.eax = apic_id
    return supported


def processor_signature(entries: Sequence[Any]) -> int:
    """CPUID.1:EAX (family, model, stepping) of a table; 0 when it has no leaf 1."""
    return next((entry.eax for entry in entries if entry.function == _LEAF_FEATURES), 0)
