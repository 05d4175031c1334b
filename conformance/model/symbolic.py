"""Numbers to names: flag sets and enums for the values a trace shows, and which ints are hex.

Every name table is derived from constants someone else owns, never typed in here: KVM's from
the generated ABI, mmap's from Python's `mmap` module, open/eventfd flags from `os`, error names
from `errno`. A value with no name (a bit or an enum member the tables do not know) is kept as a
hex number, so nothing is ever silently dropped.
"""

from __future__ import annotations

import errno
import mmap
import os
import re
from collections.abc import Iterable, Mapping
from types import ModuleType

from conformance.abi import _generated as kvm_abi
from conformance.model.document import Hex, Value
from conformance.model.events import Fields, FieldValue


def _constants(
    namespace: ModuleType, prefix: str, *, exclude: Iterable[str] = ()
) -> dict[str, int]:
    """The int constants of `namespace` named `prefix*`, minus names starting with `exclude`."""
    excluded = tuple(exclude)
    # Filtered before sorting: the generated ABI module holds ~900 names, and a dozen tables
    # are built from namespaces like it at every start of the tracer.
    return dict(
        sorted(
            (name, value)
            for name, value in vars(namespace).items()
            if name.startswith(prefix)
            and not name.startswith(excluded)
            and isinstance(value, int)
            and not isinstance(value, bool)
        )
    )


class EnumNames:
    """Value -> name for an enum-like family of constants."""

    def __init__(self, constants: Mapping[str, int], *, strip_prefix: str = "") -> None:
        self._names: dict[int, str] = {}
        # Sorted so that when two names share a value the choice is the same on every host.
        for name, value in sorted(constants.items()):
            shown = name.removeprefix(strip_prefix).lower() if strip_prefix else name
            self._names.setdefault(value, shown)

    def name(self, value: int) -> Value:
        return self._names.get(value, Hex(value))


class FlagNames:
    """A bit mask -> the list of flag names whose bits are set, unknown bits kept as one hex."""

    def __init__(self, constants: Mapping[str, int], *, zero: str | None = None) -> None:
        # Multi-bit constants first (O_SYNC covers O_DSYNC's bit), then by name for determinism;
        # zero-valued constants name nothing in a mask and are left out.
        self._flags = sorted(
            ((name, value) for name, value in constants.items() if value > 0),
            key=lambda item: (-item[1].bit_count(), item[1], item[0]),
        )
        self._zero = zero

    def names(self, mask: int) -> list[Value]:
        if mask == 0:
            return [self._zero] if self._zero is not None else []
        chosen: list[tuple[int, str]] = []
        remaining = mask
        for name, value in self._flags:
            if value & remaining == value:
                chosen.append((value, name))
                remaining &= ~value
        # Listed in bit order, as strace does, whatever order the table was searched in.
        result: list[Value] = [name for _, name in sorted(chosen)]
        if remaining:
            result.append(Hex(remaining))
        return result


# KVM_EXIT_IO_IN/OUT, KVM_EXIT_HYPERV_* and KVM_EXIT_XEN_* are sub-codes of one exit's payload,
# not exit reasons, although they share the prefix.
EXIT_REASONS = EnumNames(
    _constants(kvm_abi, "KVM_EXIT_", exclude=("KVM_EXIT_IO_", "KVM_EXIT_HYPERV_", "KVM_EXIT_XEN_"))
)
IO_DIRECTIONS = EnumNames(_constants(kvm_abi, "KVM_EXIT_IO_"), strip_prefix="KVM_EXIT_IO_")
SYSTEM_EVENTS = EnumNames(_constants(kvm_abi, "KVM_SYSTEM_EVENT_"))
INTERNAL_ERRORS = EnumNames(
    _constants(kvm_abi, "KVM_INTERNAL_ERROR_", exclude=("KVM_INTERNAL_ERROR_EMULATION_FLAG_",))
)
CAPABILITIES = EnumNames(_constants(kvm_abi, "KVM_CAP_"))
MEMORY_SLOT_FLAGS = FlagNames(_constants(kvm_abi, "KVM_MEM_"))

MMAP_PROT = FlagNames(_constants(mmap, "PROT_"), zero="PROT_NONE")
# Python's mmap module lacks MAP_FIXED and MAP_NORESERVE; the generated ABI carries every MAP_*
# macro of <linux/mman.h>. Only single-bit flags name bits: MAP_HUGE_* encode a page size in the
# top bits, MAP_TYPE is a mask, MAP_SHARED_VALIDATE a two-bit value, MAP_FILE is 0, and MAP_ANON
# is MAP_ANONYMOUS's alias.
MMAP_FLAGS = FlagNames(
    {
        name: value
        for name, value in (_constants(mmap, "MAP_") | _constants(kvm_abi, "MAP_")).items()
        if value.bit_count() == 1 and not name.startswith("MAP_HUGE_") and name != "MAP_ANON"
    }
)
MREMAP_FLAGS = FlagNames(_constants(kvm_abi, "MREMAP_"))
MADVICE = EnumNames(_constants(mmap, "MADV_"))
EVENTFD_FLAGS = FlagNames(_constants(os, "EFD_"))

# O_ACCMODE's two low bits are an enum (O_RDONLY is 0), the rest flags; O_NDELAY, O_FSYNC and
# O_RSYNC are aliases of O_NONBLOCK and O_SYNC.
_OPEN_ACCESS = EnumNames({"O_RDONLY": os.O_RDONLY, "O_WRONLY": os.O_WRONLY, "O_RDWR": os.O_RDWR})
_OPEN_FLAGS = FlagNames(
    _constants(
        os,
        "O_",
        exclude=("O_ACCMODE", "O_RDONLY", "O_WRONLY", "O_RDWR", "O_NDELAY", "O_FSYNC", "O_RSYNC"),
    )
)


def open_flags(flags: int) -> list[Value]:
    return [_OPEN_ACCESS.name(flags & os.O_ACCMODE), *_OPEN_FLAGS.names(flags & ~os.O_ACCMODE)]


def errno_name(code: int) -> Value:
    return errno.errorcode.get(code, code)


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Field names whose ints are counts, indices, ids or small enums: shown in decimal. Every other
# int in a struct is an address, size, mask or register and is shown in hex.
_DECIMAL_FIELDS = _words("""
    slot nent nmsrs nprefix nr nr_ranges count n ndata id vcpu_id gsi irq level type is_write
    pending injected nr_pages present dpl db s l g avl unusable datamatch_len error
    request_interrupt_window immediate_exit
""")
# In a KVM_RUN exit, `size`/`len`/`count` are access widths and repeat counts, not byte sizes.
_DECIMAL_EXIT_FIELDS = _DECIMAL_FIELDS | {"size", "len", "count", "suberror"}


def number(value: int, field_name: str, *, in_exit: bool = False) -> int:
    decimal = _DECIMAL_EXIT_FIELDS if in_exit else _DECIMAL_FIELDS
    return value if field_name in decimal else Hex(value)


# A pointer argument the tracer could not read whole (the kernel answers EFAULT): `NULL`, as
# strace writes a null pointer, or `unreadable` (unmapped, PROT_NONE, running into such a page).
NULL = "NULL"
UNREADABLE = "unreadable"

# The integer argument of these ioctls is an address (KVM_SET_TSS_ADDR); of the rest, an id,
# type or capability number.
_ADDRESS_ARGUMENT = re.compile(r"_ADDR$")


def ioctl_argument(request: str, value: int) -> Value:
    if request == "KVM_CHECK_EXTENSION":
        return CAPABILITIES.name(value)
    return Hex(value) if _ADDRESS_ARGUMENT.search(request) else value


# Struct fields that hold host virtual addresses, by ioctl: these become `regionN+0xOFF` names
# (or `unmapped` when they point outside every traced mapping, e.g. at the heap).
HOST_POINTER_FIELDS: Mapping[str, frozenset[str]] = {
    "KVM_SET_USER_MEMORY_REGION": frozenset({"userspace_addr"}),
    "KVM_SET_USER_MEMORY_REGION2": frozenset({"userspace_addr"}),
    "KVM_GET_DIRTY_LOG": frozenset({"dirty_bitmap"}),
    "KVM_CLEAR_DIRTY_LOG": frozenset({"dirty_bitmap"}),
    "KVM_GET_ONE_REG": frozenset({"addr"}),
    "KVM_SET_ONE_REG": frozenset({"addr"}),
    "KVM_GET_DEVICE_ATTR": frozenset({"addr"}),
    "KVM_SET_DEVICE_ATTR": frozenset({"addr"}),
    "KVM_HAS_DEVICE_ATTR": frozenset({"addr"}),
    "KVM_X86_SET_MSR_FILTER": frozenset({"bitmap"}),
    "KVM_MEMORY_ENCRYPT_REG_REGION": frozenset({"addr"}),
    "KVM_MEMORY_ENCRYPT_UNREG_REGION": frozenset({"addr"}),
}

# Struct fields with symbolic values, by ioctl: field name -> the table that names its values.
_SLOT_FLAGS = {"flags": MEMORY_SLOT_FLAGS}
STRUCT_FLAG_FIELDS: Mapping[str, Mapping[str, FlagNames]] = {
    "KVM_SET_USER_MEMORY_REGION": _SLOT_FLAGS,
    "KVM_SET_USER_MEMORY_REGION2": _SLOT_FLAGS,
}
# `cap` is a capability number wherever it appears (kvm_enable_cap, on system, VM and vCPU fds).
STRUCT_ENUM_FIELDS: Mapping[str, EnumNames] = {"cap": CAPABILITIES}
# In a KVM_RUN exit: (payload member of kvm_run's union, field) -> the table naming its values.
EXIT_PAYLOAD_ENUMS: Mapping[tuple[str, str], EnumNames] = {
    ("io", "direction"): IO_DIRECTIONS,
    ("internal", "suberror"): INTERNAL_ERRORS,
    ("emulation_failure", "suberror"): INTERNAL_ERRORS,
    ("system_event", "type"): SYSTEM_EVENTS,
}

# Struct fields holding an eventfd's fd number, by ioctl.
EVENTFD_FIELDS: Mapping[str, frozenset[str]] = {
    "KVM_IOEVENTFD": frozenset({"fd"}),
    "KVM_IRQFD": frozenset({"fd", "resamplefd"}),
}

_SHORT_BYTES = 16  # byte strings up to this long are shown as a list of bytes, longer as hex
HEX_BYTES = "hex:"  # the prefix of a longer byte string: hex:<lowercase hex>


def byte_string(value: bytes) -> Value:
    if len(value) <= _SHORT_BYTES:
        return [Hex(byte) for byte in value]
    return HEX_BYTES + value.hex()


def exit_fields(run_exit: Fields) -> dict[str, Value]:
    """kvm_run's exit: the reason, then the payload's fields flattened beside it."""
    shown: dict[str, Value] = {}
    for name, value in run_exit.items():
        if name == "exit_reason" and isinstance(value, int):
            shown["reason"] = EXIT_REASONS.name(value)
        elif isinstance(value, dict):
            for member, member_value in value.items():
                key = (
                    member if member not in run_exit and member not in shown else f"{name}_{member}"
                )
                shown[key] = _exit_value(name, member, member_value)
        else:
            shown[name] = _exit_value("", name, value)
    return shown


def _exit_value(payload: str, name: str, value: FieldValue) -> Value:
    if isinstance(value, dict):
        return {key: _exit_value(payload, key, item) for key, item in value.items()}
    if isinstance(value, list):
        return [_exit_value(payload, name, item) for item in value]
    if isinstance(value, bytes):
        return byte_string(value)
    enum = EXIT_PAYLOAD_ENUMS.get((payload, name))
    if enum is not None:
        return enum.name(value)
    return number(value, name, in_exit=True)
