"""Fields that are not a VMM's decision: the kernel ignores them, or they are clocks.

A comparison of two VMMs (or of two runs of one) asks what each VMM decided. Some bytes of the
structs it passes decide nothing:

- `IGNORED`: the kernel does not read the field, given the struct's other fields (a flag that
  says it is not valid, a count that stops before it, a register the kernel recomputes);
- `PADDING`: padding and reserved bytes the kernel never reads (often the VMM's uninitialized
  stack: QEMU's kvm_irqchip.pad is 0x5555 one run and 0x561a the next);
- `CLOCK`: clocks and counters, whose value is the moment they were read (kvmclock, the PIT's
  load time, the TSC, the APIC timer's current count).

One row per (struct, field), as linux/kvm.h names them; a row applies wherever that struct
appears in a call, inputs and outputs alike (so KVM_SET_SREGS2 and KVM_GET_SREGS2 share theirs).
`lapic_page` and `xsave_area` are the register pages that model/register_pages.py decodes
kvm_lapic_state.regs and kvm_xsave.region into; their fields are register names.

`unless` says when the field *is* a decision: the row applies only while it does not hold, read
from the same struct instance. Sources are Linux 6.1 (the headers the ABI is generated from);
each reason names the function that shows it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from conformance.abi import _generated as abi


class Why(enum.Enum):
    IGNORED = "ignored"  # the kernel does not read it, given the struct's other fields
    PADDING = "padding"  # padding or reserved bytes the kernel never reads
    CLOCK = "clock"  # a clock or counter: its value is the moment it was read


@dataclass(frozen=True, slots=True)
class AnyBitSet:
    """Holds when `field` of the same struct has any bit of `mask` set."""

    field: str
    mask: int


@dataclass(frozen=True, slots=True)
class NotEqual:
    """Holds when `field` of the same struct is not `value`."""

    field: str
    value: int


@dataclass(frozen=True, slots=True)
class WithinCount:
    """For an array field: holds for the elements before the count in `field`."""

    field: str


Condition = AnyBitSet | NotEqual | WithinCount


@dataclass(frozen=True, slots=True)
class NotADecision:
    struct: str  # the C struct (or decoded register page) the field belongs to
    field: str
    why: Why
    reason: str  # why, with the kernel function that shows it
    unless: Condition | None = None  # the field is a decision when this holds


def _padding(struct: str, *fields: str, reason: str) -> tuple[NotADecision, ...]:
    return tuple(NotADecision(struct, name, Why.PADDING, reason) for name in fields)


_MSR_IA32_TSC = 0x10  # Intel SDM vol. 4, table 2-2
_XFEATURE_FP = 1 << 0  # XSTATE_BV bits (Intel SDM vol. 1, 13.1): x87
_XFEATURE_SSE = 1 << 1  # XMM registers, MXCSR
_XFEATURE_YMM = 1 << 2  # the upper halves of YMM0-15
_VCPU_EVENTS = "kvm_vcpu_events"
_EVENTS_REASON = "kvm_vcpu_ioctl_x86_set_vcpu_events() (arch/x86/kvm/x86.c) reads it only when "
_XSAVE_REASON = (
    "copy_uabi_to_xstate() (arch/x86/kernel/fpu/xstate.c) copies an XSAVE component only when "
    "its XSTATE_BV bit is set; a clear bit loads the component's init state"
)
_APIC_STATE = "kvm_apic_set_state() (arch/x86/kvm/lapic.c)"

ROWS: tuple[NotADecision, ...] = (
    # -- special registers
    NotADecision(
        "kvm_sregs2",
        "pdptrs",
        Why.IGNORED,
        "__set_sregs2() (arch/x86/kvm/x86.c) loads the PAE PDPTRs only when flags has "
        "KVM_SREGS2_FLAGS_PDPTRS_VALID; QEMU leaves them as stack bytes otherwise",
        AnyBitSet("flags", abi.KVM_SREGS2_FLAGS_PDPTRS_VALID),
    ),
    *_padding(
        "kvm_segment",
        "padding",
        reason="kvm_set_segment() (arch/x86/kvm/x86.c) copies base, limit, selector and the "
        "attribute bits, never the padding",
    ),
    *_padding(
        "kvm_dtable",
        "padding",
        reason="__set_sregs_common() (arch/x86/kvm/x86.c) reads a descriptor table's base and "
        "limit only",
    ),
    # -- clocks and timers
    NotADecision(
        "kvm_clock_data",
        "clock",
        Why.CLOCK,
        "kvmclock's value: KVM_GET_CLOCK reads it at the moment of the call and a VMM sets back "
        "what it read (kvm_vm_ioctl_get_clock/set_clock, arch/x86/kvm/x86.c)",
    ),
    NotADecision(
        "kvm_clock_data",
        "realtime",
        Why.IGNORED,
        "kvm_vm_ioctl_set_clock() (arch/x86/kvm/x86.c) reads realtime only when flags has "
        "KVM_CLOCK_REALTIME; KVM_GET_CLOCK writes the host's wall clock there",
        AnyBitSet("flags", abi.KVM_CLOCK_REALTIME),
    ),
    NotADecision(
        "kvm_clock_data",
        "host_tsc",
        Why.CLOCK,
        "the host TSC at KVM_GET_CLOCK (get_kvmclock(), arch/x86/kvm/x86.c); "
        "kvm_vm_ioctl_set_clock() never reads it",
    ),
    *_padding(
        "kvm_clock_data",
        "pad0",
        "pad",
        reason="kvm_vm_ioctl_set_clock() (arch/x86/kvm/x86.c) reads clock, flags and realtime only",
    ),
    NotADecision(
        "kvm_pit_channel_state",
        "count_load_time",
        Why.CLOCK,
        "the host clock when the PIT counter was loaded: KVM_SET_PIT2 overwrites it with "
        "ktime_get() for channels 1 and 2 (pit_load_count(), arch/x86/kvm/i8254.c), and "
        "channel 0 counts on an hrtimer that never reads it",
    ),
    *_padding(
        "kvm_pit_state2",
        "reserved",
        reason="kvm_vm_ioctl_set_pit2() (arch/x86/kvm/i8254.c) reads channels and flags only",
    ),
    *_padding(
        "kvm_pit_config",
        "pad",
        reason="kvm_create_pit() (arch/x86/kvm/i8254.c) reads flags only",
    ),
    NotADecision(
        "kvm_msr_entry",
        "data",
        Why.CLOCK,
        "MSR_IA32_TSC's value is the guest TSC at the moment the VMM read or chose it",
        NotEqual("index", _MSR_IA32_TSC),
    ),
    # -- interrupt controllers
    *_padding(
        "kvm_irqchip",
        "pad",
        reason="kvm_vm_ioctl_set_irqchip() (arch/x86/kvm/x86.c) reads chip_id and the chip",
    ),
    *_padding(
        "kvm_ioapic_state",
        "pad",
        reason="kvm_set_ioapic() (arch/x86/kvm/ioapic.c) copies it into a field nothing reads",
    ),
    NotADecision(
        "lapic_page",
        "version",
        Why.IGNORED,
        f"{_APIC_STATE} rewrites the version register from the vCPU's CPUID "
        "(kvm_apic_set_version())",
    ),
    NotADecision(
        "lapic_page",
        "ppr",
        Why.IGNORED,
        f"{_APIC_STATE} recomputes the processor priority from TPR and ISR (apic_update_ppr())",
    ),
    NotADecision(
        "lapic_page",
        "eoi",
        Why.IGNORED,
        "EOI is write-only: kvm_lapic_reg_read() (arch/x86/kvm/lapic.c) never reads it back",
    ),
    NotADecision(
        "lapic_page",
        "rrd",
        Why.IGNORED,
        "KVM implements no remote read: kvm_lapic_reg_read() (arch/x86/kvm/lapic.c) never reads it",
    ),
    NotADecision(
        "lapic_page",
        "self_ipi",
        Why.IGNORED,
        "SELF IPI is write-only (x2APIC): the stored value is never read",
    ),
    NotADecision(
        "lapic_page",
        "timer_current_count",
        Why.CLOCK,
        "the APIC timer's current count, which counts down with time: KVM_GET_LAPIC computes "
        "it at the moment of the call (kvm_apic_get_state(), arch/x86/kvm/lapic.c)",
    ),
    *_padding(
        "lapic_page",
        "reserved",
        reason="the bytes of the APIC page outside its registers (Intel SDM vol. 3A, table "
        "11-1): no register read returns them",
    ),
    # -- FPU and extended state
    *(
        NotADecision("xsave_area", name, Why.IGNORED, _XSAVE_REASON, AnyBitSet("xstate_bv", bit))
        for names, bit in (
            (("fcw", "fsw", "ftw", "fop", "fip", "fdp", "st"), _XFEATURE_FP),
            (("xmm",), _XFEATURE_SSE),
            (("ymm_hi128",), _XFEATURE_YMM),
            (("mxcsr", "mxcsr_mask"), _XFEATURE_FP | _XFEATURE_SSE | _XFEATURE_YMM),
        )
        for name in names
    ),
    *_padding(
        "xsave_area",
        "reserved",
        reason="the reserved bytes of the XSAVE legacy area and header (Intel SDM vol. 1, "
        "10.5.1 and 13.4): XRSTOR ignores them and KVM refuses a non-zero header reserve",
    ),
    *_padding(
        "kvm_fpu",
        "pad1",
        "pad2",
        reason="kvm_arch_vcpu_ioctl_set_fpu() (arch/x86/kvm/x86.c) copies the named fields",
    ),
    NotADecision(
        "kvm_xcrs",
        "xcrs",
        Why.IGNORED,
        "kvm_vcpu_ioctl_x86_set_xcrs() (arch/x86/kvm/x86.c) reads the first nr_xcrs entries",
        WithinCount("nr_xcrs"),
    ),
    *_padding(
        "kvm_xcrs",
        "padding",
        reason="kvm_vcpu_ioctl_x86_set_xcrs() (arch/x86/kvm/x86.c) reads nr_xcrs, flags, xcrs",
    ),
    *_padding(
        "kvm_xcr",
        "reserved",
        reason="__kvm_set_xcr() (arch/x86/kvm/x86.c) takes the register's index and value",
    ),
    # -- vCPU events and debug registers
    *(
        NotADecision(
            _VCPU_EVENTS,
            name,
            Why.IGNORED,
            _EVENTS_REASON + flag,
            AnyBitSet("flags", getattr(abi, flag)),
        )
        for name, flag in (
            ("sipi_vector", "KVM_VCPUEVENT_VALID_SIPI_VECTOR"),
            ("smi", "KVM_VCPUEVENT_VALID_SMM"),
            ("triple_fault", "KVM_VCPUEVENT_VALID_TRIPLE_FAULT"),
            ("exception_has_payload", "KVM_VCPUEVENT_VALID_PAYLOAD"),
            ("exception_payload", "KVM_VCPUEVENT_VALID_PAYLOAD"),
        )
    ),
    *_padding(
        _VCPU_EVENTS,
        "reserved",
        reason="kvm_vcpu_ioctl_x86_set_vcpu_events() (arch/x86/kvm/x86.c) reads named fields",
    ),
    *_padding(
        "kvm_debugregs",
        "reserved",
        reason="kvm_vcpu_ioctl_x86_set_debugregs() (arch/x86/kvm/x86.c) reads db, dr6, dr7 "
        "(and refuses non-zero flags)",
    ),
    # -- CPUID and MSR lists
    *_padding(
        "kvm_cpuid2",
        "padding",
        reason="kvm_vcpu_ioctl_set_cpuid2() (arch/x86/kvm/cpuid.c) reads nent and the entries",
    ),
    *_padding(
        "kvm_cpuid_entry2",
        "padding",
        reason="KVM looks an entry up by function and index and reads flags and eax..edx "
        "(kvm_find_cpuid_entry2(), arch/x86/kvm/cpuid.c)",
    ),
    *_padding(
        "kvm_msrs",
        "pad",
        reason="msr_io() (arch/x86/kvm/x86.c) reads nmsrs and the entries",
    ),
    *_padding(
        "kvm_msr_entry",
        "reserved",
        reason="msr_io() (arch/x86/kvm/x86.c) passes each entry's index and data",
    ),
    *(
        NotADecision(
            "kvm_msr_filter_range",
            name,
            Why.IGNORED,
            "kvm_add_msr_filter() (arch/x86/kvm/x86.c) skips a range with nmsrs 0",
            NotEqual("nmsrs", 0),
        )
        for name in ("flags", "base", "bitmap")
    ),
    # -- memory slots and eventfds
    *(
        NotADecision(
            "kvm_userspace_memory_region",
            name,
            Why.IGNORED,
            "a memory_size of 0 deletes the slot: __kvm_set_memory_region() (virt/kvm/"
            "kvm_main.c) checks the flags' and addresses' validity, then uses only the slot id",
            NotEqual("memory_size", 0),
        )
        for name in ("flags", "guest_phys_addr", "userspace_addr")
    ),
    NotADecision(
        "kvm_ioeventfd",
        "datamatch",
        Why.IGNORED,
        "kvm_assign_ioeventfd_idx() (virt/kvm/eventfd.c) matches any value unless flags has "
        "KVM_IOEVENTFD_FLAG_DATAMATCH",
        AnyBitSet("flags", abi.KVM_IOEVENTFD_FLAG_DATAMATCH),
    ),
    *_padding(
        "kvm_ioeventfd",
        "pad",
        reason="kvm_ioeventfd() (virt/kvm/eventfd.c) reads the named fields",
    ),
    NotADecision(
        "kvm_irqfd",
        "resamplefd",
        Why.IGNORED,
        "kvm_irqfd_assign() (virt/kvm/eventfd.c) reads resamplefd only when flags has "
        "KVM_IRQFD_FLAG_RESAMPLE",
        AnyBitSet("flags", abi.KVM_IRQFD_FLAG_RESAMPLE),
    ),
    *_padding("kvm_irqfd", "pad", reason="kvm_irqfd() (virt/kvm/eventfd.c) reads named fields"),
    *_padding(
        "kvm_irq_routing_entry",
        "pad",
        reason="kvm_set_routing_entry() (arch/x86/kvm/irq_comm.c) reads gsi, type, flags and u",
    ),
    *_padding(
        "kvm_msi",
        "pad",
        reason="kvm_send_userspace_msi() (virt/kvm/irqchip.c) reads address, data, flags, devid",
    ),
    *_padding(
        "kvm_enable_cap",
        "pad",
        reason="kvm_vm_ioctl_enable_cap() / kvm_vcpu_ioctl_enable_cap() read cap, flags, args",
    ),
    *_padding(
        "kvm_x86_mce",
        "pad1",
        "pad2",
        reason="kvm_vcpu_ioctl_x86_set_mce() (arch/x86/kvm/x86.c) reads the named fields",
    ),
    *_padding(
        "kvm_tpr_access_ctl",
        "reserved",
        reason="vcpu_ioctl_tpr_access_reporting() (arch/x86/kvm/x86.c) reads enabled and flags",
    ),
)

_BY_STRUCT: dict[str, dict[str, NotADecision]] = {}
for _row in ROWS:
    _BY_STRUCT.setdefault(_row.struct, {})[_row.field] = _row
BY_STRUCT: Mapping[str, Mapping[str, NotADecision]] = MappingProxyType(
    {struct: MappingProxyType(fields) for struct, fields in _BY_STRUCT.items()}
)


def row(struct: str, field: str) -> NotADecision | None:
    """The row for `field` of `struct`, if that field is ever not a decision."""
    return BY_STRUCT.get(struct, {}).get(field)
