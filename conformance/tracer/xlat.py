"""Display names for MSR indices and CPUID leaves, which linux/kvm.h does not carry.

For the `text` format only: traces and comparisons keep the numbers. Sources:
- MSRs: Intel SDM vol. 4, "Model-Specific Registers", table 2-2 (architectural MSRs);
  AMD APM vol. 2, appendix A (MSR cross-reference) for the AMD ones; the KVM paravirtual MSRs
  from the kernel's Documentation/virt/kvm/x86/msr.rst.
- CPUID: Intel SDM vol. 2A, CPUID instruction, table 3-8; AMD APM vol. 3, appendix E;
  KVM's leaves from Documentation/virt/kvm/x86/cpuid.rst.
"""

from __future__ import annotations

from collections.abc import Mapping

MSR_NAMES: Mapping[int, str] = {
    0x00000010: "IA32_TIME_STAMP_COUNTER",
    0x0000001B: "IA32_APIC_BASE",
    0x0000003A: "IA32_FEATURE_CONTROL",
    0x0000003B: "IA32_TSC_ADJUST",
    0x00000048: "IA32_SPEC_CTRL",
    0x00000049: "IA32_PRED_CMD",
    0x0000008B: "IA32_BIOS_SIGN_ID",
    0x000000E7: "IA32_MPERF",
    0x000000E8: "IA32_APERF",
    0x000000FE: "IA32_MTRRCAP",
    0x0000010A: "IA32_ARCH_CAPABILITIES",
    0x0000010B: "IA32_FLUSH_CMD",
    0x00000122: "IA32_TSX_CTRL",
    0x00000174: "IA32_SYSENTER_CS",
    0x00000175: "IA32_SYSENTER_ESP",
    0x00000176: "IA32_SYSENTER_EIP",
    0x00000179: "IA32_MCG_CAP",
    0x0000017A: "IA32_MCG_STATUS",
    0x000001A0: "IA32_MISC_ENABLE",
    0x000001D9: "IA32_DEBUGCTL",
    0x00000277: "IA32_PAT",
    0x000002FF: "IA32_MTRR_DEF_TYPE",
    0x00000345: "IA32_PERF_CAPABILITIES",
    0x0000038D: "IA32_FIXED_CTR_CTRL",
    0x0000038E: "IA32_PERF_GLOBAL_STATUS",
    0x0000038F: "IA32_PERF_GLOBAL_CTRL",
    0x00000390: "IA32_PERF_GLOBAL_OVF_CTRL",
    0x000006E0: "IA32_TSC_DEADLINE",
    0x00000D90: "IA32_BNDCFGS",
    0x00000DA0: "IA32_XSS",
    0x00000011: "MSR_KVM_WALL_CLOCK",
    0x00000012: "MSR_KVM_SYSTEM_TIME",
    0x4B564D00: "MSR_KVM_WALL_CLOCK_NEW",
    0x4B564D01: "MSR_KVM_SYSTEM_TIME_NEW",
    0x4B564D02: "MSR_KVM_ASYNC_PF_EN",
    0x4B564D03: "MSR_KVM_STEAL_TIME",
    0x4B564D04: "MSR_KVM_PV_EOI_EN",
    0x4B564D05: "MSR_KVM_POLL_CONTROL",
    0x4B564D06: "MSR_KVM_ASYNC_PF_INT",
    0x4B564D07: "MSR_KVM_ASYNC_PF_ACK",
    0x4B564D08: "MSR_KVM_MIGRATION_CONTROL",
    0xC0000080: "IA32_EFER",
    0xC0000081: "IA32_STAR",
    0xC0000082: "IA32_LSTAR",
    0xC0000083: "IA32_CSTAR",
    0xC0000084: "IA32_FMASK",
    0xC0000100: "IA32_FS_BASE",
    0xC0000101: "IA32_GS_BASE",
    0xC0000102: "IA32_KERNEL_GS_BASE",
    0xC0000103: "IA32_TSC_AUX",
    0xC0000104: "AMD_TSC_RATIO",
    0xC0010117: "AMD_VM_HSAVE_PA",
}
# Ranges of numbered MSRs: (first index, count, name pattern with {n}).
_MSR_RANGES = (
    (0x00000200, 16, "IA32_MTRR_PHYS{kind}{n}"),  # PHYSBASE0, PHYSMASK0, PHYSBASE1...
    (0x000000C1, 8, "IA32_PMC{n}"),
    (0x00000186, 8, "IA32_PERFEVTSEL{n}"),
    (0x00000309, 4, "IA32_FIXED_CTR{n}"),
    (0x00000400, 128, "IA32_MC{bank}_{register}"),  # CTL, STATUS, ADDR, MISC per bank
)
_MC_REGISTERS = ("CTL", "STATUS", "ADDR", "MISC")

CPUID_LEAF_NAMES: Mapping[int, str] = {
    0x00000000: "max leaf, vendor",
    0x00000001: "version, features",
    0x00000002: "cache and TLB descriptors",
    0x00000004: "deterministic cache parameters",
    0x00000005: "MONITOR/MWAIT",
    0x00000006: "thermal and power management",
    0x00000007: "structured extended features",
    0x0000000A: "architectural performance monitoring",
    0x0000000B: "extended topology",
    0x0000000D: "XSAVE state components",
    0x00000012: "SGX",
    0x00000014: "processor trace",
    0x00000015: "TSC / crystal clock ratio",
    0x00000016: "processor frequency",
    0x00000019: "key locker",
    0x0000001D: "AMX tile information",
    0x0000001E: "AMX TMUL information",
    0x0000001F: "V2 extended topology",
    0x40000000: "hypervisor signature (KVMKVMKVM)",
    0x40000001: "KVM paravirtual features",
    0x80000000: "max extended leaf",
    0x80000001: "extended features",
    0x80000002: "brand string 1",
    0x80000003: "brand string 2",
    0x80000004: "brand string 3",
    0x80000005: "L1 cache and TLB (AMD)",
    0x80000006: "L2/L3 cache",
    0x80000007: "advanced power management (invariant TSC)",
    0x80000008: "address sizes",
    0x8000000A: "SVM features (AMD)",
    0x80000019: "1 GiB TLB (AMD)",
    0x8000001A: "performance optimization (AMD)",
    0x8000001F: "memory encryption (AMD SEV)",
    0x80000021: "extended features 2 (AMD)",
}


def msr_name(index: int) -> str | None:
    name = MSR_NAMES.get(index)
    if name is not None:
        return name
    for first, count, pattern in _MSR_RANGES:
        offset = index - first
        if 0 <= offset < count:
            if "{kind}" in pattern:
                return pattern.format(kind=("BASE", "MASK")[offset % 2], n=offset // 2)
            if "{bank}" in pattern:
                return pattern.format(bank=offset // 4, register=_MC_REGISTERS[offset % 4])
            return pattern.format(n=offset)
    return None


def cpuid_leaf_name(function: int) -> str | None:
    return CPUID_LEAF_NAMES.get(function)
