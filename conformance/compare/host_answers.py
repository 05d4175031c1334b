"""Inputs of the VMM core that are the host's answers passed on, and telling hosts apart.

The VMM core gives its vCPU the CPUID that KVM_GET_SUPPORTED_CPUID reports (with the vCPU's own
APIC ID written in), and at the reset vector the processor signature from it. On a host whose
KVM reports other CPUID, those inputs differ from a snapshot recorded elsewhere although the VMM
behaves the same. The gate compares them only when both traces saw the same supported CPUID.
"""

from __future__ import annotations

from conformance.compare.keyed_sets import GUEST_MUTABLE_CPUID, CpuidMask, cpuid_differences
from conformance.model.document import TraceDocument, Value

# CompareOptions paths of the inputs that follow the host's supported CPUID.
HOST_DERIVED_INPUTS = ("KVM_SET_CPUID2:in", "KVM_SET_REGS:in.rdx")

# KVM fills these from whichever host CPU answered (Intel SDM vol. 2A, CPUID; AMD APM vol. 3):
# not a difference between hosts, only between the CPUs of one.
_ANSWERING_CPU = (
    CpuidMask(0x1, 0, "ebx", 0xFF << 24, "initial APIC ID of the answering CPU"),
    CpuidMask(0xB, 0, "edx", 0xFFFFFFFF, "x2APIC ID of the answering CPU"),
    CpuidMask(0xB, 1, "edx", 0xFFFFFFFF, "x2APIC ID of the answering CPU"),
    CpuidMask(0x1F, 0, "edx", 0xFFFFFFFF, "x2APIC ID of the answering CPU"),
    CpuidMask(0x1F, 1, "edx", 0xFFFFFFFF, "x2APIC ID of the answering CPU"),
    CpuidMask(0x8000001E, 0, "eax", 0xFFFFFFFF, "extended APIC ID of the answering CPU"),
)


def same_host_cpuid(expected: TraceDocument, actual: TraceDocument) -> bool:
    """Whether both traces were answered the same supported CPUID (or neither asked)."""
    theirs, ours = _supported_cpuid(expected), _supported_cpuid(actual)
    if theirs is None or ours is None:
        return theirs is ours
    masks = (*GUEST_MUTABLE_CPUID, *_ANSWERING_CPU)
    return not cpuid_differences(_entries(theirs), _entries(ours), masks)


def _supported_cpuid(document: TraceDocument) -> list[Value] | None:
    """The entries of the first KVM_GET_SUPPORTED_CPUID that succeeded, in any thread."""
    for located in document.calls():
        entry = located.entry
        out = entry.get("out")
        if located.call.name == "KVM_GET_SUPPORTED_CPUID" and "errno" not in entry:
            entries = out.get("entries") if isinstance(out, dict) else None
            if isinstance(entries, list):
                return entries
    return None


def _entries(values: list[Value]) -> list[dict[str, Value]]:
    return [value for value in values if isinstance(value, dict)]
