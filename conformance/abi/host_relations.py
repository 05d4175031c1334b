"""What the host answers, and which of a VMM's inputs derive from those answers: one table each.

A trace mixes what the VMM decided with what the host answered (the CPUID it supports, MSR
lists, capabilities, sizes, the TSC frequency) and with inputs the VMM took from those answers
(KVM_SET_CPUID2 from the supported table, the reset EDX from its leaf 1). Only the decisions are
the VMM's behaviour, so:

- `HOST_ANSWERS` says where each answer of the host profile (a trace's `source: host:`) is
  read from: which call, which field. The profile is built from these rows, nothing else.
- `HOST_RELATIONS` says which VMM input derives from which answer, and how the trace writes an
  input equal to its answer (`SYMBOL`): as the name of the answer instead of the value, the way
  fds and addresses are already written. An input that differs from the answer stays literal
  and is compared. The comparison reads the same rows: it never decides on its own which fields
  follow the host.
- `ANSWERING_CPU` lists the CPUID fields KVM fills from whichever host CPU ran the ioctl: not a
  difference between hosts, only between the CPUs of one, and not part of any VMM's policy.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HostAnswer:
    """Where one answer of the host profile comes from: the first successful call of `request`
    (on an fd of role `fd`, when given), its field `field` (`out.ret` for the return value)."""

    key: str  # the profile's key, `source: host: KEY:`
    request: str
    field: str
    fd: str | None = None
    why: str = ""


HOST_ANSWERS: tuple[HostAnswer, ...] = (
    HostAnswer("kvm_api", "KVM_GET_API_VERSION", "out.ret"),
    HostAnswer("supported_cpuid", "KVM_GET_SUPPORTED_CPUID", "out.entries"),
    HostAnswer("emulated_cpuid", "KVM_GET_EMULATED_CPUID", "out.entries"),
    HostAnswer("hv_cpuid", "KVM_GET_SUPPORTED_HV_CPUID", "out.entries"),
    HostAnswer("msr_index_list", "KVM_GET_MSR_INDEX_LIST", "out.indices"),
    HostAnswer("msr_feature_index_list", "KVM_GET_MSR_FEATURE_INDEX_LIST", "out.indices"),
    HostAnswer(
        "feature_msrs",
        "KVM_GET_MSRS",
        "out.entries",
        fd="kvm",
        why="KVM_GET_MSRS on /dev/kvm reads feature MSRs (kvm_get_msr_feature, x86.c)",
    ),
    HostAnswer("vcpu_mmap_size", "KVM_GET_VCPU_MMAP_SIZE", "out.ret"),
    HostAnswer("tsc_khz", "KVM_GET_TSC_KHZ", "out.ret"),
    HostAnswer("mce_cap", "KVM_X86_GET_MCE_CAP_SUPPORTED", "out.value"),
)
# KVM_CHECK_EXTENSION's answers, by capability (a missing `ret` is 0): `source: host:
# extensions:`. KVM_CAP_XSAVE2's answer is the XSAVE buffer size KVM_GET_XSAVE2 needs.
EXTENSIONS = "extensions"
XSAVE_SIZE_CAPABILITY = "KVM_CAP_XSAVE2"


class Relation(enum.Enum):
    """How an input follows the answer it derives from."""

    SYMBOL = "symbol"  # equal to the answer: written as the answer's name
    CPUID_TABLE = "cpuid table"  # per register of each entry: `host` where equal to the table's
    SAME_VENDOR = "same vendor"  # the host's CPU vendor picks it: compared between hosts of one
    MSR_LIST = "msr list"  # an MSR the VMM handles because the host's MSR index list has it


@dataclass(frozen=True, slots=True)
class HostRelation:
    request: str  # the VMM's call
    field: str  # its field: `arg`, `in.rdx`; `in.entries[].data` for each item of a list
    answer: str  # the profile's answer it derives from (`supported_cpuid`, `tsc_khz`)
    relation: Relation
    symbol: str  # how an input equal to the answer is written
    why: str
    cpuid_leaf: int | None = None  # a row about one CPUID leaf (every subleaf) of the table
    from_leaf: int | None = None  # ... whose registers follow this leaf of the host's table


# `{index}` in a symbol is the MSR index of the entry (hex).
HOST_RELATIONS: tuple[HostRelation, ...] = (
    HostRelation(
        "KVM_SET_CPUID2",
        "in.entries",
        "supported_cpuid",
        Relation.CPUID_TABLE,
        "host",
        "a VMM's CPUID policy is written relative to the supported table: a register equal to "
        "the table's is `host`, a table passed on whole is `entries: host` (and `nent: host`); "
        "leaves dropped or added and registers changed stay literal",
    ),
    HostRelation(
        "KVM_SET_CPUID2",
        "in.entries[0x80000000/*].ebx,ecx,edx",
        "supported_cpuid",
        Relation.CPUID_TABLE,
        "host",
        "the vendor string, repeated in leaf 0x80000000 as AMD defines it: QEMU copies leaf 0's "
        "there on every host (Intel's own table has zeros there)",
        cpuid_leaf=0x80000000,
        from_leaf=0x0,
    ),
    HostRelation(
        "KVM_SET_CPUID2",
        "in.entries[0x2/*]",
        "vendor",
        Relation.SAME_VENDOR,
        "",
        "leaf 2, cache and TLB descriptors, is Intel's: QEMU fills it for an Intel vendor and "
        "zeroes it for AMD (target/i386/cpu.c, cpu_x86_cpuid, vendor_cpuid_only)",
        cpuid_leaf=0x2,
    ),
    HostRelation(
        "KVM_SET_CPUID2",
        "in.entries[0x4/*]",
        "vendor",
        Relation.SAME_VENDOR,
        "",
        "leaf 4, deterministic cache parameters, is Intel's: QEMU lists its subleaves for an "
        "Intel vendor and gives one empty one for AMD (as leaf 2)",
        cpuid_leaf=0x4,
    ),
    HostRelation(
        "KVM_SET_REGS",
        "in.rdx",
        "supported_cpuid",
        Relation.SYMBOL,
        "host.cpuid.0x1.eax",
        "EDX at reset holds the processor signature (Intel SDM vol. 3A 9.1.4), CPUID.1:EAX",
    ),
    HostRelation(
        "KVM_SET_TSC_KHZ",
        "arg",
        "tsc_khz",
        Relation.SYMBOL,
        "host.tsc_khz",
        "a VMM that keeps the host's TSC frequency passes KVM_GET_TSC_KHZ's answer on",
    ),
    HostRelation(
        "KVM_SET_MSRS",
        "in.entries[].data",
        "feature_msrs",
        Relation.SYMBOL,
        "host.msr.{index}",
        "a feature MSR (ARCH_CAPABILITIES, ...) set to the value /dev/kvm reported for it",
    ),
    HostRelation(
        "KVM_SET_MSRS",
        "in.entries",
        "msr_index_list",
        Relation.MSR_LIST,
        "",
        "a VMM that saves and restores the MSRs KVM_GET_MSR_INDEX_LIST names (QEMU: has_msr_*) "
        "handles an MSR on the hosts whose list has it: in one trace only where only that "
        "host's list has it",
    ),
    HostRelation(
        "KVM_GET_MSRS",
        "in.entries",
        "msr_index_list",
        Relation.MSR_LIST,
        "",
        "as KVM_SET_MSRS: the MSRs read follow the host's MSR index list",
    ),
    HostRelation(
        "KVM_SET_MSRS",
        "in.entries[0x8b].data",
        "vendor",
        Relation.SAME_VENDOR,
        "",
        "MSR_IA32_UCODE_REV, the microcode revision of the CPU model the guest is shown: QEMU "
        "takes it from the host's vendor (0x1000065 for AMD, 0x100000000 for Intel; "
        "target/i386/cpu.c, x86_cpu_realizefn)",
    ),
)

# The vendor string of CPUID leaf 0 (EBX, EDX, ECX): which vendor a host's CPU is.
VENDOR_LEAF = 0x0
SIGNATURE_LEAF = 0x1  # EAX: family, model, stepping


@dataclass(frozen=True, slots=True)
class AnsweringCpuField:
    function: int
    index: int | None  # None: every subleaf
    register: str
    bits: int
    why: str


# KVM fills these from whichever host CPU answered KVM_GET_SUPPORTED_CPUID (Intel SDM vol. 2A,
# CPUID; AMD APM vol. 3, appendix E); a VMM writes its vCPU's own there.
ANSWERING_CPU: tuple[AnsweringCpuField, ...] = (
    AnsweringCpuField(0x1, 0, "ebx", 0xFF << 24, "initial APIC ID"),
    AnsweringCpuField(0xB, None, "edx", 0xFFFFFFFF, "x2APIC ID"),
    AnsweringCpuField(0x1F, None, "edx", 0xFFFFFFFF, "x2APIC ID"),
    AnsweringCpuField(0x8000001E, 0, "eax", 0xFFFFFFFF, "extended APIC ID"),
)


def answering_cpu_bits(function: int, index: int, register: str) -> int:
    """The bits of one CPUID register that belong to the answering CPU (0 for most)."""
    bits = 0
    for field in ANSWERING_CPU:
        if (field.function, field.register) == (function, register) and field.index in (
            None,
            index,
        ):
            bits |= field.bits
    return bits
