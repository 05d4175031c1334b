"""Two traces from two hosts: what the hosts answered differently, and the VMM's decisions compared.

Each document carries its host profile (`source: host:`, model/host_profile.py) and writes an
input equal to its host answer as a symbol (model/host_symbols.py), so most host differences
never reach the comparison: `host.tsc_khz` equals `host.tsc_khz` whatever each host's TSC is.
What is left is here, and only what the relation table (abi/host_relations.py) names:

- KVM_SET_CPUID2: both tables are read back as values and a bit may differ between the traces
  only where the two hosts' supported tables differ and each trace took its own host's bit (one
  policy explains both); a leaf may be in one trace only where only that host has it, as the host
  has it. The answering CPU's APIC-ID fields are never compared.
- fields that follow the host's CPU vendor (the microcode revision QEMU shows) are compared
  only between hosts of one vendor.
- a call present in one trace only, right after a probe whose answer differs between the hosts,
  is explained by the host (`explained_by`), not a regression.

`HostContext.lines()` is the one account of the hosts' differences every face prints.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from conformance.abi.host_relations import (
    HOST_RELATIONS,
    Relation,
    answering_cpu_bits,
)
from conformance.model.document import Entry, Hex, TraceCall, TraceDocument, Value
from conformance.model.host_profile import CpuidKey, HostProfile
from conformance.model.host_symbols import resolve_call

_REGISTERS = ("eax", "ebx", "ecx", "edx")
_SAME_VENDOR_MSRS = {
    int(r.field.split("[")[1].split("]")[0], 16): r
    for r in HOST_RELATIONS
    if r.relation is Relation.SAME_VENDOR and r.request == "KVM_SET_MSRS"
}
_LISTED_MSRS = frozenset(r.request for r in HOST_RELATIONS if r.relation is Relation.MSR_LIST)
_VENDOR_LEAVES = frozenset(
    r.cpuid_leaf
    for r in HOST_RELATIONS
    if r.relation is Relation.SAME_VENDOR and r.request == "KVM_SET_CPUID2"
)
# leaf -> the leaf of the host's table its registers may follow instead of their own
_ALIASED_LEAVES = {
    r.cpuid_leaf: r.from_leaf
    for r in HOST_RELATIONS
    if r.cpuid_leaf is not None and r.from_leaf is not None
}
# Answers the host block names, with how: (profile key, words before, unit after).
_SCALAR_ANSWERS = (
    ("kernel", "kernel", ""),
    ("kvm_api", "KVM API", ""),
    ("tsc_khz", "TSC", " kHz"),
    ("xsave_size", "XSAVE size", " bytes"),
    ("vcpu_mmap_size", "vCPU mmap size", " bytes"),
    ("mce_cap", "MCE capabilities", ""),
)
_LISTS = (
    ("msr_index_list", "MSR index list"),
    ("msr_feature_index_list", "feature MSR list"),
    ("emulated_cpuid", "emulated CPUID"),
)


@dataclass(slots=True)
class HostContext:
    """The hosts of an expected (or reference) trace and an actual (or subject) one."""

    expected: HostProfile
    actual: HostProfile
    # What the comparison let differ because the hosts' vendors differ: shown once.
    vendor_explained: dict[str, tuple[Value, Value]] = field(default_factory=dict)
    # MSRs one trace handles because only its host's MSR index list has them: shown once.
    listed_explained: set[int] = field(default_factory=set)

    @classmethod
    def between(cls, expected: TraceDocument, actual: TraceDocument) -> HostContext:
        return cls(HostProfile.of(expected), HostProfile.of(actual))

    @property
    def differ(self) -> bool:
        return bool(self.lines())

    # -- the host block ---------------------------------------------------------------------

    def lines(self, before: str = "recorded on", after: str = "running on") -> list[str]:
        """One line per way the hosts differ, the hosts themselves first; [] if they agree."""
        e, a = self.expected, self.actual
        found: list[str] = []
        for key, words, unit in _SCALAR_ANSWERS:
            left, right = e.get(key), a.get(key)
            if left is not None and right is not None and left != right:
                found.append(f"{words}: {_shown(left)}{unit} → {_shown(right)}{unit}")
        if e.get("vendor") != a.get("vendor") and e.get("vendor") and a.get("vendor"):
            found.insert(0, f"CPU vendor: {e.get('vendor')} → {a.get('vendor')}")
        signature = (_signature(e), _signature(a))
        if signature[0] != signature[1] and all(signature):
            found.append(f"CPU: {signature[0]} → {signature[1]}")
        for name in sorted(set(e.extensions) | set(a.extensions)):
            left, right = e.extensions.get(name), a.extensions.get(name)
            if left is not None and right is not None and left != right:
                found.append(f"{name}: {_shown(left)} → {_shown(right)}")
        for key, words in _LISTS:
            found.extend(_list_difference(words, e.get(key), a.get(key)))
        found.extend(_feature_msr_differences(e, a))
        if self.listed_explained:
            shown = ", ".join(f"{index:#x}" for index in sorted(self.listed_explained))
            found.append(f"MSR {shown}: in one host's MSR index list only, handled there")
        for what, (left, right) in sorted(self.vendor_explained.items()):
            change = f": {_shown(left)} → {_shown(right)}" if left != right else ""
            found.append(f"{what}{change}: follows the CPU vendor, not compared")
        cpuid = (e.cpuid_entries(), a.cpuid_entries())
        both_asked = None not in cpuid
        if found or (both_asked and e.cpuid != a.cpuid):
            head = f"{before} {e.name}{_entries(cpuid[0], True)}, {after} {a.name}"
            found.insert(0, head + _entries(cpuid[1], False))
        return found

    def probe_differs(self, call: TraceCall) -> str | None:
        """How the answer to this probe differs between the hosts, or None: a
        CHECK_EXTENSION whose capability each host answered otherwise."""
        entry = call.entry
        if entry.get("req") != "KVM_CHECK_EXTENSION":
            return None
        name = entry.get("arg")
        if not isinstance(name, str):
            return None
        left, right = self.expected.extensions.get(name), self.actual.extensions.get(name)
        if left is None or right is None or left == right:
            return None
        return f"KVM_CHECK_EXTENSION({name}): {_shown(left)} → {_shown(right)}"

    # -- reconciling two calls --------------------------------------------------------------

    def reconcile(self, expected: TraceCall, actual: TraceCall) -> tuple[TraceCall, TraceCall]:
        """Both calls with what the hosts explain made equal; the rest as it was."""
        request = expected.entry.get("req")
        if request == "KVM_SET_CPUID2" and actual.entry.get("req") == request:
            mine = resolve_call(expected.entry, self.expected)
            theirs = resolve_call(actual.entry, self.actual)
            mine, theirs = self._cpuid(mine, theirs)
            return TraceCall(mine, expected.line), TraceCall(theirs, actual.line)
        if request in _LISTED_MSRS and actual.entry.get("req") == request:
            mine, theirs = self._listed_msrs(expected.entry, actual.entry)
            if request == "KVM_SET_MSRS" and self._vendors_differ():
                theirs = self._vendor_msrs(mine, theirs)
            return TraceCall(mine, expected.line), TraceCall(theirs, actual.line)
        return expected, actual

    def _listed_msrs(self, expected: Entry, actual: Entry) -> tuple[Entry, Entry]:
        """Both MSR lists without the MSRs only one host's MSR index list has, where that
        trace alone handles them."""
        own, other = self.expected.get("msr_index_list"), self.actual.get("msr_index_list")
        e_in, a_in = expected.get("in"), actual.get("in")
        if (
            expected.get("fd") == "kvm"  # feature MSRs: not the index list's
            or not isinstance(own, list)
            or not isinstance(other, list)
            or own == other
            or not isinstance(e_in, dict)
            or not isinstance(a_in, dict)
        ):
            return expected, actual
        e_items, a_items = e_in.get("entries"), a_in.get("entries")
        if not isinstance(e_items, list) or not isinstance(a_items, list):
            return expected, actual
        e_indices, a_indices = _msr_indices(e_items), _msr_indices(a_items)
        only_own = {i for i in e_indices - a_indices if i in own and i not in other}
        only_other = {i for i in a_indices - e_indices if i in other and i not in own}
        for index in sorted(only_own | only_other):
            self.listed_explained.add(index)
        e_kept = [item for item in e_items if _msr_index(item) not in only_own]
        a_kept = [item for item in a_items if _msr_index(item) not in only_other]
        e_new: Entry = {**e_in, "entries": e_kept}
        a_new: Entry = {**a_in, "entries": a_kept}
        if len(e_kept) == len(a_kept) and "nmsrs" in e_in:
            a_new["nmsrs"] = e_in["nmsrs"]  # the count of the entries, compared through them
        return {**expected, "in": e_new}, {**actual, "in": a_new}

    def _vendors_differ(self) -> bool:
        left, right = self.expected.get("vendor"), self.actual.get("vendor")
        return left is not None and right is not None and left != right

    def _cpuid(self, expected: Entry, actual: Entry) -> tuple[Entry, Entry]:
        e_in, a_in = expected.get("in"), actual.get("in")
        if not isinstance(e_in, dict) or not isinstance(a_in, dict):
            return expected, actual
        e_list, a_list = e_in.get("entries"), a_in.get("entries")
        if not isinstance(e_list, list) or not isinstance(a_list, list):
            return expected, actual
        e_host, a_host = self.expected.cpuid, self.actual.cpuid
        mine = _keyed(e_list)
        theirs = _keyed(a_list)
        kept_mine = {
            key: item
            for key, item in mine.items()
            if key in theirs or not _own_host_only(key, item, e_host, a_host)
        }
        kept_theirs: dict[CpuidKey | int, Value] = {}
        for key, item in theirs.items():
            if key in mine:
                kept_theirs[key] = _reconciled(key, mine[key], item, e_host, a_host)
            elif not _own_host_only(key, item, a_host, e_host):
                kept_theirs[key] = item
        if self._vendors_differ():
            # What the tables do not explain of a leaf that follows the vendor.
            for key in sorted({*kept_mine, *kept_theirs}, key=str):
                if _vendor_leaf(key) and kept_mine.get(key) != kept_theirs.get(key):
                    assert isinstance(key, tuple)  # _vendor_leaf checked it
                    self.vendor_explained[f"CPUID leaf {key[0]:#x}"] = ("", "")
                    kept_mine.pop(key, None)
                    kept_theirs.pop(key, None)
        e_new: Entry = {**e_in, "entries": list(kept_mine.values())}
        a_new: Entry = {**a_in, "entries": list(kept_theirs.values())}
        if "nent" in e_in and (e_host != a_host or len(kept_mine) == len(kept_theirs)):
            # nent counts the entries: compared through them, not as each host's count.
            a_new["nent"] = e_in["nent"]
        return {**expected, "in": e_new}, {**actual, "in": a_new}

    def _vendor_msrs(self, expected: Entry, actual: Entry) -> Entry:
        e_items = _msr_data(expected)
        a_in = actual.get("in")
        if not isinstance(a_in, dict) or not isinstance(a_in.get("entries"), list):
            return actual
        items = [self._vendor_msr(item, e_items) for item in a_in["entries"]]  # type: ignore[union-attr]  # a list (checked above)
        return {**actual, "in": {**a_in, "entries": items}}

    def _vendor_msr(self, item: Value, expected: Mapping[int, Value]) -> Value:
        """An MSR that follows the CPU vendor, given the expected trace's value."""
        index = _msr_index(item)
        if not isinstance(item, dict) or index not in _SAME_VENDOR_MSRS or index not in expected:
            return item
        left, right = expected[index], item.get("data")
        if left == right or right is None:
            return item
        self.vendor_explained[f"MSR {index:#x}"] = (left, right)
        return {**item, "data": left}


def _vendor_leaf(key: CpuidKey | int) -> bool:
    return isinstance(key, tuple) and key[0] in _VENDOR_LEAVES


def _keyed(items: list[Value]) -> dict[CpuidKey | int, Value]:
    keyed: dict[CpuidKey | int, Value] = {}
    for position, item in enumerate(items):
        key = _cpuid_key(item)
        keyed.setdefault(key if key is not None else -1 - position, item)
    return keyed


def _cpuid_key(item: Value) -> CpuidKey | None:
    if not isinstance(item, dict):
        return None
    function, index = item.get("function"), item.get("index")
    return (function, index) if isinstance(function, int) and isinstance(index, int) else None


def _own_host_only(
    key: CpuidKey | int,
    item: Value,
    own: Mapping[CpuidKey, Mapping[str, int]],
    other: Mapping[CpuidKey, Mapping[str, int]],
) -> bool:
    """A leaf this trace has because its host has it (as the host has it), the other host not."""
    if not isinstance(key, tuple) or key not in own or key in other or not isinstance(item, dict):
        return False
    host = own[key]
    for register in _REGISTERS:
        value = item.get(register)
        mask = ~answering_cpu_bits(key[0], key[1], register)
        if not isinstance(value, int) or value & mask != host.get(register, 0) & mask:
            return False
    return True


def _reconciled(
    key: CpuidKey | int,
    mine: Value,
    theirs: Value,
    e_host: Mapping[CpuidKey, Mapping[str, int]],
    a_host: Mapping[CpuidKey, Mapping[str, int]],
) -> Value:
    """`theirs` with every bit one policy explains on both hosts taken from `mine`."""
    if not isinstance(key, tuple) or not isinstance(mine, dict) or not isinstance(theirs, dict):
        return theirs
    sources = [key]
    alias = _ALIASED_LEAVES.get(key[0])
    if alias is not None:
        sources.append((alias, 0))
    result = dict(theirs)
    for register in _REGISTERS:
        e, a = mine.get(register), theirs.get(register)
        if not isinstance(e, int) or not isinstance(a, int):
            continue
        explained = answering_cpu_bits(key[0], key[1], register)
        for source in sources:
            he, ha = e_host.get(source, {}).get(register), a_host.get(source, {}).get(register)
            if he is not None and ha is not None:
                # Bits where the hosts differ and each trace has its own host's bit.
                explained |= ~(e ^ he) & ~(a ^ ha) & (he ^ ha)
        result[register] = Hex((a & ~explained) | (e & explained))
    return result


def _msr_index(item: Value) -> int | None:
    index = item.get("index") if isinstance(item, dict) else None
    return index if isinstance(index, int) else None


def _msr_indices(items: list[Value]) -> set[int]:
    return {index for item in items if (index := _msr_index(item)) is not None}


def _msr_data(entry: Entry) -> dict[int, Value]:
    inputs = entry.get("in")
    items = inputs.get("entries") if isinstance(inputs, dict) else None
    found: dict[int, Value] = {}
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and isinstance(item.get("index"), int):
            found[item["index"]] = item.get("data", 0)  # type: ignore[index]  # an int
    return found


def _shown(value: Value) -> str:
    if isinstance(value, Hex):
        return hex(value)
    return str(value)


def _entries(count: int | None, first: bool) -> str:
    if count is None:
        return ""
    return f" ({count} CPUID entries)" if first else f" ({count})"


def _signature(profile: HostProfile) -> str | None:
    parts = [profile.get(key) for key in ("family", "model", "stepping")]
    if not all(isinstance(part, int) for part in parts):
        return None
    return f"family {parts[0]} model {parts[1]} stepping {parts[2]}"


def _list_difference(words: str, left: Value | None, right: Value | None) -> list[str]:
    if not isinstance(left, list) or not isinstance(right, list) or left == right:
        return []
    line = f"{words}: {len(left)} → {len(right)} entries"
    mine = {item for item in left if isinstance(item, int)}
    theirs = {item for item in right if isinstance(item, int)}
    if len(mine) == len(left) and len(theirs) == len(right):
        added, removed = sorted(theirs - mine), sorted(mine - theirs)
        changes = [f"+{item:#x}" for item in added] + [f"-{item:#x}" for item in removed]
        if changes:
            line += f" ({', '.join(changes[:8])}{', …' if len(changes) > 8 else ''})"
    return [line]


def _feature_msr_differences(expected: HostProfile, actual: HostProfile) -> list[str]:
    found = []
    for item in _as_list(expected.get("feature_msrs")):
        index = item.get("index") if isinstance(item, dict) else None
        if not isinstance(index, int):
            continue
        left, right = expected.feature_msr(index), actual.feature_msr(index)
        if left is not None and right is not None and left != right:
            found.append(f"feature MSR {index:#x}: {left:#x} → {right:#x}")
    return found


def _as_list(value: Value | None) -> list[Value]:
    return value if isinstance(value, list) else []
