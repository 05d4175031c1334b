"""Capability rules: an ioctl that needs a capability, and the XSAVE size KVM_CAP_XSAVE2 gives."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator, Mapping

from conformance.abi import _generated as abi
from conformance.lint.calls import calls_in_order, capability_answers
from conformance.lint.engine import Hit, Rule, Severity
from conformance.model.calls import fd, process_of, request, section
from conformance.model.document import TraceDocument

# The capability each ioctl's section of Documentation/virt/kvm/api.rst names on its
# "Capability:" line (x86). Ioctls every KVM has (API 12) are not listed. Where the
# capability depends on the fd (the *_DEVICE_ATTR family), it is keyed by (request, fd kind).
REQUIRED_CAPABILITY: Mapping[str, str] = {
    "KVM_SET_TSS_ADDR": "KVM_CAP_SET_TSS_ADDR",
    "KVM_SET_IDENTITY_MAP_ADDR": "KVM_CAP_SET_IDENTITY_MAP_ADDR",
    "KVM_CREATE_IRQCHIP": "KVM_CAP_IRQCHIP",
    "KVM_IRQ_LINE": "KVM_CAP_IRQCHIP",
    "KVM_GET_IRQCHIP": "KVM_CAP_IRQCHIP",
    "KVM_SET_IRQCHIP": "KVM_CAP_IRQCHIP",
    "KVM_IRQ_LINE_STATUS": "KVM_CAP_IRQ_INJECT_STATUS",
    "KVM_SET_GSI_ROUTING": "KVM_CAP_IRQ_ROUTING",
    "KVM_IRQFD": "KVM_CAP_IRQFD",
    "KVM_IOEVENTFD": "KVM_CAP_IOEVENTFD",
    "KVM_SIGNAL_MSI": "KVM_CAP_SIGNAL_MSI",
    "KVM_CREATE_PIT2": "KVM_CAP_PIT2",
    "KVM_GET_PIT2": "KVM_CAP_PIT_STATE2",
    "KVM_SET_PIT2": "KVM_CAP_PIT_STATE2",
    "KVM_REINJECT_CONTROL": "KVM_CAP_REINJECT_CONTROL",
    "KVM_GET_CLOCK": "KVM_CAP_ADJUST_CLOCK",
    "KVM_SET_CLOCK": "KVM_CAP_ADJUST_CLOCK",
    "KVM_REGISTER_COALESCED_MMIO": "KVM_CAP_COALESCED_MMIO",
    "KVM_UNREGISTER_COALESCED_MMIO": "KVM_CAP_COALESCED_MMIO",
    "KVM_GET_SUPPORTED_CPUID": "KVM_CAP_EXT_CPUID",
    "KVM_GET_EMULATED_CPUID": "KVM_CAP_EXT_EMUL_CPUID",
    "KVM_GET_MSR_FEATURE_INDEX_LIST": "KVM_CAP_GET_MSR_FEATURES",
    "KVM_X86_SET_MSR_FILTER": "KVM_CAP_X86_MSR_FILTER",
    "KVM_GET_MP_STATE": "KVM_CAP_MP_STATE",
    "KVM_SET_MP_STATE": "KVM_CAP_MP_STATE",
    "KVM_GET_VCPU_EVENTS": "KVM_CAP_VCPU_EVENTS",
    "KVM_SET_VCPU_EVENTS": "KVM_CAP_VCPU_EVENTS",
    "KVM_GET_DEBUGREGS": "KVM_CAP_DEBUGREGS",
    "KVM_SET_DEBUGREGS": "KVM_CAP_DEBUGREGS",
    "KVM_GET_XSAVE": "KVM_CAP_XSAVE",
    "KVM_SET_XSAVE": "KVM_CAP_XSAVE",
    "KVM_GET_XSAVE2": "KVM_CAP_XSAVE2",
    "KVM_GET_XCRS": "KVM_CAP_XCRS",
    "KVM_SET_XCRS": "KVM_CAP_XCRS",
    "KVM_GET_SREGS2": "KVM_CAP_SREGS2",
    "KVM_SET_SREGS2": "KVM_CAP_SREGS2",
    "KVM_GET_TSC_KHZ": "KVM_CAP_GET_TSC_KHZ",
    "KVM_SET_TSC_KHZ": "KVM_CAP_TSC_CONTROL",
    "KVM_X86_GET_MCE_CAP_SUPPORTED": "KVM_CAP_MCE",
    "KVM_X86_SETUP_MCE": "KVM_CAP_MCE",
    "KVM_X86_SET_MCE": "KVM_CAP_MCE",
    "KVM_TPR_ACCESS_REPORTING": "KVM_CAP_VAPIC",
    "KVM_SET_VAPIC_ADDR": "KVM_CAP_VAPIC",
    "KVM_SET_GUEST_DEBUG": "KVM_CAP_SET_GUEST_DEBUG",
    "KVM_GET_NESTED_STATE": "KVM_CAP_NESTED_STATE",
    "KVM_SET_NESTED_STATE": "KVM_CAP_NESTED_STATE",
    "KVM_KVMCLOCK_CTRL": "KVM_CAP_KVMCLOCK_CTRL",
    "KVM_SMI": "KVM_CAP_X86_SMM",
    "KVM_NMI": "KVM_CAP_USER_NMI",
    "KVM_SET_BOOT_CPU_ID": "KVM_CAP_SET_BOOT_CPU_ID",
    "KVM_CREATE_DEVICE": "KVM_CAP_DEVICE_CTRL",
    "KVM_GET_STATS_FD": "KVM_CAP_BINARY_STATS_FD",
    "KVM_SET_PMU_EVENT_FILTER": "KVM_CAP_PMU_EVENT_FILTER",
    "KVM_HYPERV_EVENTFD": "KVM_CAP_HYPERV_EVENTFD",
    "KVM_GET_SUPPORTED_HV_CPUID": "KVM_CAP_HYPERV_CPUID",
    "KVM_CLEAR_DIRTY_LOG": "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2",
    "KVM_RESET_DIRTY_RINGS": "KVM_CAP_DIRTY_LOG_RING",
}
# The *_DEVICE_ATTR ioctls on /dev/kvm, a VM and a vCPU each have their own capability; on a
# device fd (KVM_CREATE_DEVICE's) they need none beyond KVM_CAP_DEVICE_CTRL.
DEVICE_ATTR_CAPABILITY: Mapping[str, str] = {
    "kvm": "KVM_CAP_SYS_ATTRIBUTES",
    "vm": "KVM_CAP_VM_ATTRIBUTES",
    "vcpu": "KVM_CAP_VCPU_ATTRIBUTES",
}
_DEVICE_ATTR_CALLS = frozenset(
    {"KVM_GET_DEVICE_ATTR", "KVM_SET_DEVICE_ATTR", "KVM_HAS_DEVICE_ATTR"}
)
KVM_XSAVE_SIZE = ctypes.sizeof(abi.kvm_xsave)  # what KVM_GET_XSAVE copies out: 4096 bytes


def required_capability(name: str, fd_role: str, enabled: str | None) -> str | None:
    """The capability a call needs: from the table; for KVM_ENABLE_CAP, the one it enables."""
    if name == "KVM_ENABLE_CAP":
        return enabled
    if name in _DEVICE_ATTR_CALLS:
        kind = "vcpu" if fd_role.startswith("vcpu") else fd_role
        return DEVICE_ATTR_CAPABILITY.get(kind)
    return REQUIRED_CAPABILITY.get(name)


def _unchecked_capabilities(document: TraceDocument) -> Iterator[Hit]:
    asked = capability_answers(document)
    reported: set[tuple[str, str]] = set()  # (process, capability): the first use is enough
    for role, calls in calls_in_order(document):
        process = process_of(role)
        for located in calls:
            name = request(located.entry)
            enabled = section(located.entry, "in").get("cap")
            capability = required_capability(
                name, fd(located.entry), enabled if isinstance(enabled, str) else None
            )
            if capability is None or capability in asked.get(process, {}):
                continue
            if (process, capability) in reported:
                continue
            reported.add((process, capability))
            yield Hit(
                role,
                located.index,
                f"{name} needs {capability}, which the VMM never asked KVM_CHECK_EXTENSION about",
            )


def _xsave_too_small(document: TraceDocument) -> Iterator[Hit]:
    answers = capability_answers(document)
    for role, calls in calls_in_order(document):
        size = answers.get(process_of(role), {}).get("KVM_CAP_XSAVE2", 0)
        if size <= KVM_XSAVE_SIZE:
            continue
        for located in calls:
            if request(located.entry) == "KVM_GET_XSAVE":
                yield Hit(
                    role,
                    located.index,
                    f"KVM_GET_XSAVE copies {KVM_XSAVE_SIZE} bytes but KVM_CAP_XSAVE2 says this "
                    f"guest's XSAVE state is {size}: use KVM_GET_XSAVE2 with a buffer that size",
                )


RULES = (
    Rule(
        id="KVMC007",
        name="XsaveStateTruncated",
        title="KVM_GET_XSAVE where KVM_CAP_XSAVE2 reports a larger XSAVE state",
        severity=Severity.ERROR,
        incidents=("cloud-hypervisor/cloud-hypervisor#7533", "rust-vmm/kvm#310"),
        rationale=(
            "struct kvm_xsave holds 4096 bytes. With dynamically enabled XSAVE features (AMX "
            "tile data) a vCPU's state is larger; KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) answers "
            "its size, and KVM_GET_XSAVE2 with a buffer of that size is the only way to save "
            "it whole (KVM_GET_XSAVE then fails with EINVAL, on older kernels it truncated)."
        ),
        check=_xsave_too_small,
    ),
    Rule(
        id="KVMC008",
        name="UncheckedCapability",
        title="An ioctl that needs a capability, issued without ever checking it",
        severity=Severity.WARNING,
        incidents=(),
        rationale=(
            "Each ioctl beyond KVM's base API is documented with the capability that announces "
            'it (Documentation/virt/kvm/api.rst, its "Capability:" line; KVM_ENABLE_CAP needs '
            "the capability it enables). A VMM that uses one without asking "
            "KVM_CHECK_EXTENSION works on this kernel and fails, or misbehaves, on one without "
            "it. Reported once per capability, at its first use; a check in any thread of the "
            "process counts. No public incident is cited: the rule follows the KVM API "
            "documentation."
        ),
        check=_unchecked_capabilities,
    ),
)
