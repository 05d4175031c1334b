"""CPUID entries and MSR lists compared as the kernel reads them: as sets, not as sequences.

KVM looks a CPUID entry up by (function, index) and applies an MSR list entry by entry by MSR
index; the order a VMM lists them in means nothing to the kernel, and KVM_GET_SUPPORTED_CPUID
itself has answered in different orders on different kernels (rust-vmm/kvm#152). Compared by
position, one inserted CPUID leaf shows as a difference in every entry after it; compared as a
keyed set, it shows as the one extra entry it is.

Some CPUID bits are not the VMM's to choose: KVM rewrites them while the guest runs (its
`kvm_update_cpuid_runtime`, arch/x86/kvm/cpuid.c), from CR4, XCR0 and the APIC base MSR. A
comparison may leave them out with `GUEST_MUTABLE_CPUID` (or a scenario's own masks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeAlias, TypeVar

from conformance.model.document import Hex, Value

CpuidKey: TypeAlias = tuple[int, int]  # (function, index)
_Key = TypeVar("_Key", CpuidKey, int)


@dataclass(frozen=True, slots=True)
class CpuidMask:
    """Bits of one register of one CPUID entry that a comparison ignores."""

    function: int
    index: int
    register: str  # eax, ebx, ecx or edx
    bits: int
    why: str


# What KVM changes at run time (kvm_update_cpuid_runtime, Linux 6.x arch/x86/kvm/cpuid.c).
GUEST_MUTABLE_CPUID: tuple[CpuidMask, ...] = (
    CpuidMask(0x1, 0, "ecx", 1 << 27, "OSXSAVE follows the guest's CR4.OSXSAVE"),
    CpuidMask(0x1, 0, "edx", 1 << 9, "APIC follows the APIC base MSR's enable bit"),
    CpuidMask(0x7, 0, "ecx", 1 << 4, "OSPKE follows the guest's CR4.PKE"),
    CpuidMask(0xD, 0, "ebx", 0xFFFFFFFF, "XSAVE area size for the guest's XCR0"),
    CpuidMask(0xD, 1, "ebx", 0xFFFFFFFF, "XSAVES area size for the guest's XCR0 | XSS"),
)


@dataclass(frozen=True, slots=True)
class KeyedDifference:
    """One difference between two keyed sets.

    `key` names the entry (`0x1/0x0` for CPUID function/index, `0x10` for an MSR); `field` is
    the differing field, or "" when the entry is only on one side (`expected` or `actual` None).
    """

    key: str
    field: str
    expected: Value | None
    actual: Value | None


def cpuid_key(entry: Mapping[str, Value]) -> CpuidKey | None:
    function, index = entry.get("function"), entry.get("index")
    if isinstance(function, int) and isinstance(index, int):
        return (function, index)
    return None


def cpuid_set(
    entries: Iterable[Mapping[str, Value]], masks: Sequence[CpuidMask] = ()
) -> dict[CpuidKey, dict[str, Value]]:
    """Entries keyed by (function, index), masked bits cleared. The first of two entries with
    one key wins, as KVM's own lookup (kvm_find_cpuid_entry) returns the first match."""
    keyed: dict[CpuidKey, dict[str, Value]] = {}
    for entry in entries:
        key = cpuid_key(entry)
        if key is None or key in keyed:
            continue
        fields = dict(entry)
        for mask in masks:
            value = fields.get(mask.register)
            if (mask.function, mask.index) == key and isinstance(value, int):
                masked = value & ~mask.bits
                fields[mask.register] = Hex(masked) if isinstance(value, Hex) else masked
        keyed[key] = fields
    return keyed


def cpuid_differences(
    expected: Iterable[Mapping[str, Value]],
    actual: Iterable[Mapping[str, Value]],
    masks: Sequence[CpuidMask] = GUEST_MUTABLE_CPUID,
) -> list[KeyedDifference]:
    """CPUID entries compared by (function, index): extra, missing and differing entries."""
    return _differences(cpuid_set(expected, masks), cpuid_set(actual, masks), _cpuid_name)


def _cpuid_name(key: CpuidKey) -> str:
    return f"{key[0]:#x}/{key[1]:#x}"


def _msr_name(key: int) -> str:
    return f"{key:#x}"


def msr_set(items: Iterable[Value]) -> dict[int, dict[str, Value]]:
    """An MSR list keyed by MSR index: kvm_msr_entry mappings ({index, data, ...}) or plain
    indices (KVM_GET_MSR_INDEX_LIST's `indices`). The last write of an MSR is what stays."""
    keyed: dict[int, dict[str, Value]] = {}
    for item in items:
        if isinstance(item, int):
            keyed[item] = {}
        elif isinstance(item, dict):
            index = item.get("index")
            if isinstance(index, int):
                keyed[index] = {name: value for name, value in item.items() if name != "index"}
    return keyed


def msr_differences(expected: Iterable[Value], actual: Iterable[Value]) -> list[KeyedDifference]:
    """MSR lists compared by MSR index: extra, missing and differing entries."""
    return _differences(msr_set(expected), msr_set(actual), _msr_name)


KeyedComparer = Callable[[Sequence[Value], Sequence[Value]], list[KeyedDifference]]


def _cpuid_lists(expected: Sequence[Value], actual: Sequence[Value]) -> list[KeyedDifference]:
    return cpuid_differences(_mappings(expected), _mappings(actual))


# The lists of a trace document that are sets, by (request, field path).
KEYED_LISTS: Mapping[tuple[str, str], KeyedComparer] = {
    ("KVM_SET_CPUID2", "in.entries"): _cpuid_lists,
    ("KVM_GET_CPUID2", "out.entries"): _cpuid_lists,
    ("KVM_GET_SUPPORTED_CPUID", "out.entries"): _cpuid_lists,
    ("KVM_GET_EMULATED_CPUID", "out.entries"): _cpuid_lists,
    ("KVM_SET_MSRS", "in.entries"): msr_differences,
    ("KVM_GET_MSRS", "in.entries"): msr_differences,
    ("KVM_GET_MSRS", "out.entries"): msr_differences,
    ("KVM_GET_MSR_INDEX_LIST", "out.indices"): msr_differences,
    ("KVM_GET_MSR_FEATURE_INDEX_LIST", "out.indices"): msr_differences,
}


def keyed_comparer(request: str, path: str) -> KeyedComparer | None:
    """The set comparison for this field of this request, or None for an ordinary list."""
    return KEYED_LISTS.get((request, path))


def element_key(request: str, path: str, item: Value) -> str | None:
    """How a keyed comparison names `item` of the list at `path` (`0x1/0x0` for a CPUID entry,
    `0x10` for an MSR); None for a list compared by position, or an item without its key."""
    comparer = KEYED_LISTS.get((request, path))
    if comparer is None or not isinstance(item, dict):
        return None
    if comparer is _cpuid_lists:
        key = cpuid_key(item)
        return _cpuid_name(key) if key is not None else None
    index = item.get("index")
    return _msr_name(index) if isinstance(index, int) else None


def _mappings(values: Sequence[Value]) -> list[Mapping[str, Value]]:
    return [value for value in values if isinstance(value, dict)]


def _differences(
    expected: Mapping[_Key, Mapping[str, Value]],
    actual: Mapping[_Key, Mapping[str, Value]],
    name: Callable[[_Key], str],
) -> list[KeyedDifference]:
    found: list[KeyedDifference] = []
    for key in sorted(expected.keys() | actual.keys()):
        if key not in actual:
            found.append(KeyedDifference(name(key), "", dict(expected[key]), None))
        elif key not in expected:
            found.append(KeyedDifference(name(key), "", None, dict(actual[key])))
        else:
            before: Mapping[str, Value] = expected[key]
            after: Mapping[str, Value] = actual[key]
            for field in [*before, *(f for f in after if f not in before)]:
                if before.get(field) != after.get(field):
                    found.append(
                        KeyedDifference(name(key), field, before.get(field), after.get(field))
                    )
    return found
