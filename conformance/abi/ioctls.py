"""The KVM ioctl table: every ioctl of linux/kvm.h with what the kernel does with its argument.

Numbers, sizes and argument types come from `_generated` (the headers). What the headers cannot
say is written down here, each fact with where it comes from: which fds the kernel accepts an
ioctl on, which ioctls pass a plain integer, which are variable-length, and where the header's
declared direction does not match what the kernel does with user memory.

The kernel facts are those of Linux 6.1, the version of the headers the table is generated from.
"""

from __future__ import annotations

import ctypes
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from conformance.abi import _generated, ioc


class Direction(enum.Enum):
    """As _IO/_IOR/_IOW/_IOWR: READ means the kernel writes user memory (userspace reads)."""

    NONE = ioc.IOC_NONE
    READ = ioc.IOC_READ
    WRITE = ioc.IOC_WRITE
    READ_WRITE = ioc.IOC_READ_WRITE


class FdKind(enum.Flag):
    SYSTEM = enum.auto()  # /dev/kvm
    VM = enum.auto()
    VCPU = enum.auto()
    DEVICE = enum.auto()  # fd returned by KVM_CREATE_DEVICE


class ArgKind(enum.Enum):
    NONE = enum.auto()  # no argument (the kernel ignores it or requires 0)
    INTEGER = enum.auto()  # the argument is a value, not a pointer
    STRUCT_IN = enum.auto()  # pointer to a fixed-size object the kernel reads
    STRUCT_OUT = enum.auto()  # ... the kernel writes
    STRUCT_INOUT = enum.auto()  # ... the kernel reads and writes
    VARIABLE = enum.auto()  # pointer to a header + entries whose number is in the header


@dataclass(frozen=True)
class IoctlSpec:
    name: str
    number: int
    direction: Direction  # effective (corrected where the header is wrong)
    declared_direction: Direction  # as the header declares it
    size: int  # the size field of the number (the fixed part for VARIABLE)
    fd_kinds: FdKind
    arg_kind: ArgKind
    struct: type[ctypes.Structure] | type[ctypes.Union] | None  # None: scalar or no argument
    count_field: str | None  # VARIABLE: field holding the entry count ("nmsrs", "nent")
    entries_field: str | None  # VARIABLE: the flexible array ("entries", "indices")
    creates: str | None  # role of the fd it returns: "vm", "vcpu", "device", "stats"
    arg_type: str | None = None  # the C type the header names ("kvm_regs", "__u64")
    x86: bool = True  # False: another architecture's (or a removed) ioctl; x86 rejects it
    note: str | None = None  # what a decoder must know beyond the fields above
    # VARIABLE: the largest count the kernel accepts or writes (in count_field's unit); a larger
    # one is refused before any entry is read. None: no limit of the kernel's (KVM_GET_XSAVE2...).
    max_count: int | None = None
    # The VMM sizes its buffer by trying: a too-small count fails E2BIG (the kernel writes the
    # count it needs), and the VMM asks again with more. A probe and its retries are one call.
    count_negotiated: bool = False


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Which fds the kernel accepts each ioctl on. Source: Linux 6.1 virt/kvm/kvm_main.c
# (kvm_dev_ioctl, kvm_vm_ioctl, kvm_vcpu_ioctl, kvm_device_ioctl) and the x86 handlers they fall
# back to in arch/x86/kvm/x86.c (kvm_arch_dev_ioctl, kvm_arch_vm_ioctl, kvm_arch_vcpu_ioctl).
_SYSTEM = _names("""
    KVM_GET_API_VERSION KVM_CREATE_VM KVM_CHECK_EXTENSION KVM_GET_VCPU_MMAP_SIZE
    KVM_GET_MSR_INDEX_LIST KVM_GET_MSR_FEATURE_INDEX_LIST KVM_GET_SUPPORTED_CPUID
    KVM_GET_EMULATED_CPUID KVM_X86_GET_MCE_CAP_SUPPORTED KVM_GET_MSRS KVM_GET_SUPPORTED_HV_CPUID
    KVM_GET_DEVICE_ATTR KVM_HAS_DEVICE_ATTR
""")
_VM = _names("""
    KVM_CREATE_VCPU KVM_ENABLE_CAP KVM_SET_USER_MEMORY_REGION KVM_GET_DIRTY_LOG
    KVM_CLEAR_DIRTY_LOG KVM_REGISTER_COALESCED_MMIO KVM_UNREGISTER_COALESCED_MMIO KVM_IRQFD
    KVM_IOEVENTFD KVM_SIGNAL_MSI KVM_IRQ_LINE KVM_IRQ_LINE_STATUS KVM_SET_GSI_ROUTING
    KVM_CREATE_DEVICE KVM_CHECK_EXTENSION KVM_RESET_DIRTY_RINGS KVM_GET_STATS_FD
    KVM_SET_TSS_ADDR KVM_SET_IDENTITY_MAP_ADDR KVM_SET_NR_MMU_PAGES KVM_GET_NR_MMU_PAGES
    KVM_CREATE_IRQCHIP KVM_GET_IRQCHIP KVM_SET_IRQCHIP KVM_CREATE_PIT KVM_CREATE_PIT2
    KVM_GET_PIT KVM_SET_PIT KVM_GET_PIT2 KVM_SET_PIT2 KVM_REINJECT_CONTROL KVM_SET_BOOT_CPU_ID
    KVM_XEN_HVM_CONFIG KVM_XEN_HVM_GET_ATTR KVM_XEN_HVM_SET_ATTR KVM_XEN_HVM_EVTCHN_SEND
    KVM_SET_CLOCK KVM_GET_CLOCK KVM_SET_TSC_KHZ KVM_GET_TSC_KHZ KVM_MEMORY_ENCRYPT_OP
    KVM_MEMORY_ENCRYPT_REG_REGION KVM_MEMORY_ENCRYPT_UNREG_REGION KVM_HYPERV_EVENTFD
    KVM_SET_PMU_EVENT_FILTER KVM_X86_SET_MSR_FILTER
""")
_VCPU = _names("""
    KVM_RUN KVM_GET_REGS KVM_SET_REGS KVM_GET_SREGS KVM_SET_SREGS KVM_GET_MP_STATE
    KVM_SET_MP_STATE KVM_TRANSLATE KVM_SET_GUEST_DEBUG KVM_SET_SIGNAL_MASK KVM_GET_FPU
    KVM_SET_FPU KVM_GET_STATS_FD KVM_ENABLE_CAP KVM_GET_LAPIC KVM_SET_LAPIC KVM_INTERRUPT
    KVM_NMI KVM_SMI KVM_SET_CPUID KVM_SET_CPUID2 KVM_GET_CPUID2 KVM_GET_MSRS KVM_SET_MSRS
    KVM_TPR_ACCESS_REPORTING KVM_SET_VAPIC_ADDR KVM_X86_SETUP_MCE KVM_X86_SET_MCE
    KVM_GET_VCPU_EVENTS KVM_SET_VCPU_EVENTS KVM_GET_DEBUGREGS KVM_SET_DEBUGREGS KVM_GET_XSAVE
    KVM_GET_XSAVE2 KVM_SET_XSAVE KVM_GET_XCRS KVM_SET_XCRS KVM_SET_TSC_KHZ KVM_GET_TSC_KHZ
    KVM_KVMCLOCK_CTRL KVM_GET_NESTED_STATE KVM_SET_NESTED_STATE KVM_GET_SUPPORTED_HV_CPUID
    KVM_XEN_VCPU_GET_ATTR KVM_XEN_VCPU_SET_ATTR KVM_GET_SREGS2 KVM_SET_SREGS2
    KVM_GET_DEVICE_ATTR KVM_SET_DEVICE_ATTR KVM_HAS_DEVICE_ATTR
""")
_DEVICE = _names("KVM_GET_DEVICE_ATTR KVM_SET_DEVICE_ATTR KVM_HAS_DEVICE_ATTR")

# ioctls x86 rejects (ENOTTY or EINVAL from the arch fallback). They still get the fd kind on
# which the generic code hands them to the architecture that implements them, so that a trace
# of a VMM issuing one decodes under the right name.
_FOREIGN_SYSTEM = _names("KVM_S390_ENABLE_SIE")  # s390 kvm_arch_dev_ioctl
_FOREIGN_VM = _names("""
    KVM_S390_GET_SKEYS KVM_S390_SET_SKEYS KVM_S390_GET_CMMA_BITS KVM_S390_SET_CMMA_BITS
    KVM_S390_PV_COMMAND KVM_S390_ZPCI_OP KVM_S390_INTERRUPT KVM_S390_MEM_OP
    KVM_PPC_GET_PVINFO KVM_PPC_GET_SMMU_INFO KVM_PPC_ALLOCATE_HTAB KVM_PPC_RESIZE_HPT_PREPARE
    KVM_PPC_RESIZE_HPT_COMMIT KVM_PPC_SVM_OFF KVM_ARM_SET_DEVICE_ADDR
    KVM_SET_MEMORY_REGION KVM_SET_MEMORY_ALIAS KVM_ASSIGN_PCI_DEVICE KVM_DEASSIGN_PCI_DEVICE
    KVM_ASSIGN_DEV_IRQ KVM_DEASSIGN_DEV_IRQ KVM_ASSIGN_SET_MSIX_NR KVM_ASSIGN_SET_MSIX_ENTRY
    KVM_ASSIGN_SET_INTX_MASK
""")  # the KVM_SET_MEMORY_* and KVM_*ASSIGN* ones are VM ioctls x86 removed (2.6.36 and 4.12)
_FOREIGN_VCPU = _names("""
    KVM_S390_UCAS_MAP KVM_S390_UCAS_UNMAP KVM_S390_VCPU_FAULT KVM_S390_INTERRUPT
    KVM_S390_STORE_STATUS KVM_S390_SET_INITIAL_PSW KVM_S390_INITIAL_RESET KVM_S390_NORMAL_RESET
    KVM_S390_CLEAR_RESET KVM_S390_MEM_OP KVM_S390_IRQ KVM_S390_SET_IRQ_STATE
    KVM_S390_GET_IRQ_STATE KVM_S390_PV_CPU_COMMAND KVM_DIRTY_TLB KVM_ARM_VCPU_FINALIZE
    KVM_GET_ONE_REG KVM_SET_ONE_REG KVM_GET_REG_LIST
""")

# _IO ioctls whose argument is a value, and _IOW ones whose "pointer" is in fact the value.
# Source: the handlers in kvm_main.c / x86.c, which use `arg` directly.
_INTEGER_ARG = _names("""
    KVM_CREATE_VM KVM_CHECK_EXTENSION KVM_CREATE_VCPU KVM_SET_TSS_ADDR KVM_SET_NR_MMU_PAGES
    KVM_SET_BOOT_CPU_ID KVM_SET_TSC_KHZ KVM_S390_VCPU_FAULT KVM_S390_STORE_STATUS
""")  # machine type, capability, vcpu id, guest address, page count, vcpu id, kHz, address...

# Where the header's direction is wrong, what the kernel really does with user memory. Memory
# the argument points to counts: the kernel writing a bitmap through a pointer in the struct is
# a write to user memory that a tracer must read back after the call.
_CORRECTED_DIRECTIONS: Mapping[str, Direction] = {
    # _IOR in the header, but the kernel only copy_from_user()s the state (strace notes both).
    "KVM_SET_IRQCHIP": Direction.WRITE,
    "KVM_SET_PIT": Direction.WRITE,
    # _IO in the header, but the argument is a struct kvm_reinject_control the kernel reads.
    "KVM_REINJECT_CONTROL": Direction.WRITE,
    # _IOR in the header, but sev_mem_enc_register_region() only reads the struct kvm_enc_region.
    "KVM_MEMORY_ENCRYPT_REG_REGION": Direction.WRITE,
    "KVM_MEMORY_ENCRYPT_UNREG_REGION": Direction.WRITE,
    # _IOW, but the kernel writes the bitmap / value / keys / state through a pointer inside.
    "KVM_GET_DIRTY_LOG": Direction.READ_WRITE,
    "KVM_GET_DEVICE_ATTR": Direction.READ_WRITE,
    "KVM_GET_ONE_REG": Direction.READ_WRITE,
    "KVM_S390_GET_SKEYS": Direction.READ_WRITE,
    "KVM_S390_GET_IRQ_STATE": Direction.READ_WRITE,
    "KVM_S390_MEM_OP": Direction.READ_WRITE,  # reads or writes guest memory into buf
    # _IOWR, but kvm_vm_ioctl_clear_dirty_log() never writes the struct or the bitmap back.
    "KVM_CLEAR_DIRTY_LOG": Direction.WRITE,
    # _IOW, but the kernel fills the struct kvm_ppc_pvinfo (copy_to_user only).
    "KVM_PPC_GET_PVINFO": Direction.READ,
    # _IOR, but kvm_vm_ioctl_assign_device() (removed in 4.12) only read the struct.
    "KVM_ASSIGN_PCI_DEVICE": Direction.WRITE,
}

# The header names no struct, or the wrong one: the kernel reads this struct instead.
_ACTUAL_STRUCTS: Mapping[str, str] = {
    "KVM_REINJECT_CONTROL": "kvm_reinject_control",  # header: _IO, no type at all
    # header: unsigned long; the command struct of the vendor backend, struct kvm_sev_cmd on AMD
    # (strace notes it); its size is not in the number.
    "KVM_MEMORY_ENCRYPT_OP": "kvm_sev_cmd",
}

# VARIABLE: (count field, entries field) of the header struct the kernel reads before the rest.
_VARIABLE: Mapping[str, tuple[str | None, str]] = {
    "KVM_GET_MSR_INDEX_LIST": ("nmsrs", "indices"),
    "KVM_GET_MSR_FEATURE_INDEX_LIST": ("nmsrs", "indices"),
    "KVM_GET_MSRS": ("nmsrs", "entries"),
    "KVM_SET_MSRS": ("nmsrs", "entries"),
    "KVM_SET_CPUID": ("nent", "entries"),
    "KVM_SET_CPUID2": ("nent", "entries"),
    "KVM_GET_CPUID2": ("nent", "entries"),
    "KVM_GET_SUPPORTED_CPUID": ("nent", "entries"),
    "KVM_GET_EMULATED_CPUID": ("nent", "entries"),
    "KVM_GET_SUPPORTED_HV_CPUID": ("nent", "entries"),
    "KVM_SET_GSI_ROUTING": ("nr", "entries"),
    "KVM_GET_REG_LIST": ("n", "reg"),
    "KVM_SET_SIGNAL_MASK": ("len", "sigset"),
    "KVM_SET_PMU_EVENT_FILTER": ("nevents", "events"),
    "KVM_GET_NESTED_STATE": ("size", "data"),
    "KVM_SET_NESTED_STATE": ("size", "data"),
    "KVM_GET_XSAVE2": (None, "extra"),
    "KVM_SET_XSAVE": (None, "extra"),
    "KVM_GET_DIRTY_LOG": (None, "dirty_bitmap"),
    "KVM_CLEAR_DIRTY_LOG": ("num_pages", "dirty_bitmap"),
}

# VARIABLE: the largest count the kernel takes, from Linux 6.1. These limits live in kernel-
# internal headers and .c files, which the ABI is not generated from, hence written here:
# - msr_io() (arch/x86/kvm/x86.c): `nmsrs >= MAX_IO_MSRS` (256) is E2BIG;
# - kvm_vcpu_ioctl_set_cpuid{,2}() and kvm_dev_ioctl_get_cpuid() (arch/x86/kvm/cpuid.c): `nent`
#   above KVM_MAX_CPUID_ENTRIES (256, asm/kvm_host.h) is E2BIG, or cut to it; KVM_GET_CPUID2 and
#   the Hyper-V leaves write at most as many;
# - kvm_vm_ioctl(KVM_SET_GSI_ROUTING) (virt/kvm/kvm_main.c): `nr > KVM_MAX_IRQ_ROUTES` (4096,
#   linux/kvm_host.h) is EINVAL;
# - kvm_vcpu_ioctl(KVM_SET_SIGNAL_MASK): `len != sizeof(sigset_t)` (8 bytes) is EINVAL;
# - kvm_vm_ioctl_set_pmu_event_filter() (arch/x86/kvm/pmu.c): `nevents >
#   KVM_PMU_EVENT_FILTER_MAX_EVENTS` (300) is E2BIG;
# - the nested state's size: its header and the larger of VMX's and SVM's data (uapi structs).
# KVM_GET_MSR_INDEX_LIST writes the count of the kernel's own lists, read back from it.
_MAX_CPUID_ENTRIES = 256
_NESTED_STATE_MAX = _generated.kvm_nested_state.data.offset + max(
    ctypes.sizeof(_generated.kvm_vmx_nested_state_data),
    ctypes.sizeof(_generated.kvm_svm_nested_state_data),
)
_MAX_COUNT: Mapping[str, int] = {
    "KVM_GET_MSRS": 255,
    "KVM_SET_MSRS": 255,
    "KVM_SET_CPUID": _MAX_CPUID_ENTRIES,
    "KVM_SET_CPUID2": _MAX_CPUID_ENTRIES,
    "KVM_GET_CPUID2": _MAX_CPUID_ENTRIES,
    "KVM_GET_SUPPORTED_CPUID": _MAX_CPUID_ENTRIES,
    "KVM_GET_EMULATED_CPUID": _MAX_CPUID_ENTRIES,
    "KVM_GET_SUPPORTED_HV_CPUID": _MAX_CPUID_ENTRIES,
    "KVM_SET_GSI_ROUTING": 4096,
    "KVM_SET_SIGNAL_MASK": 8,
    "KVM_SET_PMU_EVENT_FILTER": 300,
    "KVM_GET_NESTED_STATE": _NESTED_STATE_MAX,
    "KVM_SET_NESTED_STATE": _NESTED_STATE_MAX,
}
# VARIABLE ioctls whose count the kernel answers: kvm_dev_ioctl_get_cpuid() and
# kvm_get_supported_hv_cpuid() (arch/x86/kvm/cpuid.c, hyperv.c) and the MSR list copies in
# kvm_arch_dev_ioctl() (x86.c) fail E2BIG with the needed count written back when `nent` /
# `nmsrs` is too small. Kernels before 5.11 did not fail HV_CPUID that way: QEMU retries
# whenever the buffer came back full (target/i386/kvm/kvm.c, try_get_hv_cpuid).
_COUNT_NEGOTIATED = _names("""
    KVM_GET_SUPPORTED_CPUID KVM_GET_EMULATED_CPUID KVM_GET_SUPPORTED_HV_CPUID
    KVM_GET_MSR_INDEX_LIST KVM_GET_MSR_FEATURE_INDEX_LIST
""")

_NOTES: Mapping[str, str] = {
    "KVM_SET_SIGNAL_MASK": "len counts bytes of sigset, not entries",
    "KVM_GET_NESTED_STATE": "size is the byte size of the whole buffer, header included",
    "KVM_SET_NESTED_STATE": "size is the byte size of the whole buffer, header included",
    "KVM_GET_XSAVE2": "buffer size = KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) on the VM fd",
    "KVM_SET_XSAVE": "takes KVM_CAP_XSAVE2 bytes once the guest has dynamic xfeatures",
    "KVM_GET_DIRTY_LOG": "dirty_bitmap points to an out-of-line bitmap, one bit per slot page",
    "KVM_CLEAR_DIRTY_LOG": "dirty_bitmap points out of line; num_pages counts its bits",
    "KVM_CREATE_DEVICE": "returns 0; the new fd is written to kvm_create_device.fd",
    "KVM_MEMORY_ENCRYPT_OP": "the number's size (8) is not the size of the struct passed",
    "KVM_REINJECT_CONTROL": "the number's size (0) is not the size of the struct passed",
    "KVM_X86_SET_MSR_FILTER": "each range's bitmap is out of line (ranges[i].bitmap)",
}

# Role of the fd the ioctl returns.
_CREATES: Mapping[str, str] = {
    "KVM_CREATE_VM": "vm",
    "KVM_CREATE_VCPU": "vcpu",
    "KVM_CREATE_DEVICE": "device",  # returned inside the struct, see _NOTES
    "KVM_GET_STATS_FD": "stats",
}

# Every name the tables above mention; a test checks each is a real ioctl (catches typos).
KNOWLEDGE_NAMES: frozenset[str] = frozenset().union(
    _SYSTEM,
    _VM,
    _VCPU,
    _DEVICE,
    _FOREIGN_SYSTEM,
    _FOREIGN_VM,
    _FOREIGN_VCPU,
    _INTEGER_ARG,
    _CORRECTED_DIRECTIONS,
    _ACTUAL_STRUCTS,
    _VARIABLE,
    _MAX_COUNT,
    _NOTES,
    _CREATES,
    _COUNT_NEGOTIATED,
)

_STRUCT_KIND_BY_DIRECTION = {
    Direction.WRITE: ArgKind.STRUCT_IN,
    Direction.READ: ArgKind.STRUCT_OUT,
    Direction.READ_WRITE: ArgKind.STRUCT_INOUT,
}


def _fd_kinds(name: str) -> FdKind:
    kinds = FdKind(0)
    for kind, native, foreign in (
        (FdKind.SYSTEM, _SYSTEM, _FOREIGN_SYSTEM),
        (FdKind.VM, _VM, _FOREIGN_VM),
        (FdKind.VCPU, _VCPU, _FOREIGN_VCPU),
        (FdKind.DEVICE, _DEVICE, frozenset[str]()),
    ):
        if name in native or name in foreign:
            kinds |= kind
    if not kinds:
        raise LookupError(f"{name}: no fd kind known; add it to the table in ioctls.py")
    return kinds


def _is_x86(name: str) -> bool:
    return name in _SYSTEM | _VM | _VCPU | _DEVICE


def _struct_class(type_name: str | None) -> type[ctypes.Structure] | type[ctypes.Union] | None:
    candidate = getattr(_generated, type_name or "", None)
    if isinstance(candidate, type) and issubclass(candidate, ctypes.Structure | ctypes.Union):
        return candidate
    return None  # a scalar (__u64, int, unsigned long) or no argument


def _arg_kind(name: str, direction: Direction) -> ArgKind:
    if name in _INTEGER_ARG:
        return ArgKind.INTEGER
    if name in _VARIABLE:
        return ArgKind.VARIABLE
    if direction is Direction.NONE:
        return ArgKind.NONE
    return _STRUCT_KIND_BY_DIRECTION[direction]


def _build_spec(name: str, number: int) -> IoctlSpec:
    fields = ioc.decode(number)
    declared = Direction(fields.direction)
    direction = _CORRECTED_DIRECTIONS.get(name, declared)
    arg_type = _ACTUAL_STRUCTS.get(name, _generated.IOCTL_ARG_TYPES[name])
    count_field, entries_field = _VARIABLE.get(name, (None, None))
    return IoctlSpec(
        name=name,
        number=number,
        direction=direction,
        declared_direction=declared,
        size=fields.size,
        fd_kinds=_fd_kinds(name),
        arg_kind=_arg_kind(name, direction),
        struct=_struct_class(arg_type),
        count_field=count_field,
        entries_field=entries_field,
        creates=_CREATES.get(name),
        arg_type=arg_type,
        x86=_is_x86(name),
        note=_NOTES.get(name),
        max_count=_MAX_COUNT.get(name),
        count_negotiated=name in _COUNT_NEGOTIATED,
    )


IOCTLS: Mapping[str, IoctlSpec] = MappingProxyType(
    {name: _build_spec(name, number) for name, number in sorted(_generated.IOCTL_NUMBERS.items())}
)

_BY_NUMBER: dict[int, list[IoctlSpec]] = {}
for _spec in IOCTLS.values():
    _BY_NUMBER.setdefault(_spec.number, []).append(_spec)


def by_name(name: str) -> IoctlSpec:
    """The spec of a KVM ioctl macro name; KeyError if linux/kvm.h has no such x86-64 ioctl."""
    return IOCTLS[name]


def by_number(number: int, fd_kinds: FdKind | None = None) -> IoctlSpec | None:
    """The ioctl a request number means, on an fd of the given kind(s) if known.

    Two ioctls can share a number (KVM_GET_ONE_REG on a vcpu, KVM_ARM_SET_DEVICE_ADDR on a VM);
    the fd kind tells them apart. Without one, an ioctl x86 implements wins, then the first
    by name.
    """
    candidates = _BY_NUMBER.get(number, [])
    if fd_kinds is not None:
        candidates = [spec for spec in candidates if spec.fd_kinds & fd_kinds]
    candidates = sorted(candidates, key=lambda spec: (not spec.x86, spec.name))
    return candidates[0] if candidates else None


def _format_fd_kinds(kinds: FdKind) -> str:
    return "|".join(kind.name or "" for kind in FdKind if kind in kinds)


def describe_table() -> list[str]:
    """One line per ioctl, "NAME 0xNUMBER DIRECTION FDKINDS ARGTYPE", by number then name.

    ARGTYPE is one whitespace-free token: the argument kind, then the C type the kernel reads or
    writes (`struct_inout:kvm_regs`, `variable:kvm_msrs[nmsrs]`, `integer`, `none`).
    """
    specs = sorted(IOCTLS.values(), key=lambda spec: (spec.number, spec.name))
    return [
        f"{spec.name} {spec.number:#010x} {spec.direction.name} "
        f"{_format_fd_kinds(spec.fd_kinds)} {_format_arg_type(spec)}"
        for spec in specs
    ]


def _format_arg_type(spec: IoctlSpec) -> str:
    kind = spec.arg_kind.name.lower()
    if spec.arg_type is None:
        return kind
    c_type = spec.arg_type.replace(" ", "_")  # "unsigned long" stays one column
    count = f"[{spec.count_field}]" if spec.count_field else ""
    return f"{kind}:{c_type}{count}"
