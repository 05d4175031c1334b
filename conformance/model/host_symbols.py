"""Host answers as symbols: an input equal to the host answer it derives from is named, not copied.

As fds become roles and addresses `ram0+0x1000`, a VMM input that equals the answer
`abi.host_relations.HOST_RELATIONS` derives it from is written as that answer's name
(`host.tsc_khz`, `host.cpuid.0x1.eax`; in KVM_SET_CPUID2, `host` for a register equal to the
supported table's, `entries: host` for the table passed on whole). The trace then says what the
VMM decided (take the host's answer) instead of what this host happened to answer; a value
that differs from the answer stays literal. `resolve_call` turns the symbols back into this
host's values, for a comparison with another host's trace and for the rules.
"""

from __future__ import annotations

from collections.abc import Mapping

from conformance.abi.host_relations import (
    HOST_RELATIONS,
    SIGNATURE_LEAF,
    Relation,
    answering_cpu_bits,
)
from conformance.model.document import Entry, Hex, TraceCall, TraceDocument, Value
from conformance.model.host_profile import CpuidKey, HostProfile

HOST_SYMBOL = "host"  # a CPUID register (or table, or count) as the supported table has it
_REGISTERS = ("eax", "ebx", "ecx", "edx")
_SYMBOLS = {relation.request: relation for relation in HOST_RELATIONS}


def symbolize(document: TraceDocument) -> TraceDocument:
    """`document` with every input equal to its host answer written as the answer's name."""
    profile = HostProfile.of(document)
    threads = {
        role: [_symbolized(call, profile) for call in calls]
        for role, calls in document.threads.items()
    }
    return TraceDocument(source=document.source, threads=threads, path=document.path)


def _symbolized(call: TraceCall, profile: HostProfile) -> TraceCall:
    entry = call.entry
    request = entry.get("req")
    if request == "KVM_GET_SUPPORTED_CPUID" and isinstance(entry.get("out"), dict):
        return TraceCall({**entry, "out": _without_answering_cpu(entry["out"])}, call.line)  # type: ignore[arg-type]  # a dict (checked)
    if entry.get("call") != "ioctl" or request not in _SYMBOLS:
        return call
    inputs = entry.get("in")
    new: Entry | None = None
    if request == "KVM_SET_CPUID2" and isinstance(inputs, dict):
        new = {**entry, "in": _cpuid_policy(inputs, profile.cpuid)}
    elif request == "KVM_SET_REGS" and isinstance(inputs, dict):
        signature = _signature(profile)
        rdx = inputs.get("rdx")
        if signature and isinstance(rdx, int) and rdx == signature:
            new = {**entry, "in": {**inputs, "rdx": _symbol("KVM_SET_REGS")}}
    elif request == "KVM_SET_TSC_KHZ":
        khz = profile.get("tsc_khz")
        if isinstance(khz, int) and entry.get("arg") == khz:
            new = {**entry, "arg": _symbol("KVM_SET_TSC_KHZ")}
    elif request == "KVM_SET_MSRS" and isinstance(inputs, dict):
        new = {**entry, "in": _feature_msrs(inputs, profile)}
    return call if new is None or new == entry else TraceCall(new, call.line)


def _without_answering_cpu(answer: Entry) -> Entry:
    """KVM_GET_SUPPORTED_CPUID's answer with the answering CPU's APIC-ID fields cleared: which
    host CPU ran the ioctl changes from run to run, the table does not."""
    entries = answer.get("entries")
    if not isinstance(entries, list):
        return answer
    return {**answer, "entries": [_without_answering_cpu_entry(item) for item in entries]}


def _without_answering_cpu_entry(item: Value) -> Value:
    key = _key(item)
    if not isinstance(item, dict) or key is None:
        return item
    return {
        name: Hex(value & ~answering_cpu_bits(key[0], key[1], name))
        if name in _REGISTERS and isinstance(value, int)
        else value
        for name, value in item.items()
    }


def _symbol(request: str) -> str:
    return next(
        r.symbol for r in HOST_RELATIONS if r.request == request and r.relation is Relation.SYMBOL
    )


def _signature(profile: HostProfile) -> int | None:
    leaf = profile.cpuid.get((SIGNATURE_LEAF, 0))
    return leaf.get("eax") if leaf is not None else None


def _cpuid_policy(inputs: Entry, table: Mapping[CpuidKey, Mapping[str, int]]) -> Entry:
    entries = inputs.get("entries")
    if not table or not isinstance(entries, list):
        return inputs
    written: list[Value] = []
    whole = len(entries) == len(table)
    keys: set[CpuidKey] = set()
    for item in entries:
        key = _key(item)
        host = table.get(key) if key is not None else None
        if not isinstance(item, dict) or key is None or host is None or key in keys:
            whole = False
            written.append(item)
            continue
        keys.add(key)
        symbolic = dict(item)
        for register in _REGISTERS:
            value = item.get(register)
            if isinstance(value, int) and _same_register(key, register, value, host):
                symbolic[register] = HOST_SYMBOL
            else:
                whole = False
        padding = item.get("padding", [])
        if item.get("flags") != host.get("flags") or (isinstance(padding, list) and any(padding)):
            whole = False
        written.append(symbolic)
    if whole:
        return {
            **{k: v for k, v in inputs.items() if k not in ("nent", "entries")},
            "nent": HOST_SYMBOL,
            "entries": HOST_SYMBOL,
        }
    return {**inputs, "entries": written}


def _same_register(key: CpuidKey, register: str, value: int, host: Mapping[str, int]) -> bool:
    theirs = host.get(register)
    if theirs is None:
        return False
    mine = ~answering_cpu_bits(key[0], key[1], register)
    return value & mine == theirs & mine


def _key(item: Value) -> CpuidKey | None:
    if not isinstance(item, dict):
        return None
    function, index = item.get("function"), item.get("index")
    if isinstance(function, int) and isinstance(index, int):
        return (function, index)
    return None


def _feature_msrs(inputs: Entry, profile: HostProfile) -> Entry:
    entries = inputs.get("entries")
    if not isinstance(entries, list):
        return inputs
    return {**inputs, "entries": [_feature_msr_symbol(item, profile) for item in entries]}


def _feature_msr_symbol(item: Value, profile: HostProfile) -> Value:
    index = item.get("index") if isinstance(item, dict) else None
    value = profile.feature_msr(index) if isinstance(index, int) else None
    if isinstance(item, dict) and value is not None and item.get("data") == value:
        return {**item, "data": f"host.msr.{index:#x}"}
    return item


# -- back to values -------------------------------------------------------------------------


def resolve_call(entry: Entry, profile: HostProfile) -> Entry:
    """`entry` with its host symbols replaced by this profile's values (a symbol the profile
    cannot give a value for stays as it is)."""
    request = entry.get("req")
    if entry.get("call") != "ioctl" or request not in _SYMBOLS:
        return entry
    inputs = entry.get("in")
    if request == "KVM_SET_CPUID2" and isinstance(inputs, dict):
        return {**entry, "in": _resolved_cpuid(inputs, profile.cpuid)}
    if request == "KVM_SET_REGS" and isinstance(inputs, dict):
        signature = _signature(profile)
        if inputs.get("rdx") == _symbol("KVM_SET_REGS") and signature is not None:
            return {**entry, "in": {**inputs, "rdx": Hex(signature)}}
    if request == "KVM_SET_TSC_KHZ":
        khz = profile.get("tsc_khz")
        if entry.get("arg") == _symbol("KVM_SET_TSC_KHZ") and isinstance(khz, int):
            return {**entry, "arg": khz}
    if request == "KVM_SET_MSRS" and isinstance(inputs, dict):
        return {**entry, "in": _resolved_msrs(inputs, profile)}
    return entry


def _resolved_cpuid(inputs: Entry, table: Mapping[CpuidKey, Mapping[str, int]]) -> Entry:
    if not table:
        return inputs
    entries = inputs.get("entries")
    if entries == HOST_SYMBOL:
        resolved: list[Value] = [
            {name: Hex(value) for name, value in host.items()} for host in table.values()
        ]
        return {**inputs, "nent": len(resolved), "entries": resolved}
    if not isinstance(entries, list):
        return inputs
    return {**inputs, "entries": [_resolved_cpuid_entry(item, table) for item in entries]}


def _resolved_cpuid_entry(item: Value, table: Mapping[CpuidKey, Mapping[str, int]]) -> Value:
    key = _key(item)
    host = table.get(key) if key is not None else None
    if not isinstance(item, dict) or host is None:
        return item
    return {
        name: Hex(host[name]) if value == HOST_SYMBOL and name in host else value
        for name, value in item.items()
    }


def _resolved_msrs(inputs: Entry, profile: HostProfile) -> Entry:
    entries = inputs.get("entries")
    if not isinstance(entries, list):
        return inputs
    return {**inputs, "entries": [_resolved_msr(item, profile) for item in entries]}


def _resolved_msr(item: Value, profile: HostProfile) -> Value:
    index = item.get("index") if isinstance(item, dict) else None
    if not isinstance(item, dict) or not isinstance(index, int):
        return item
    value = profile.feature_msr(index)
    if item.get("data") == f"host.msr.{index:#x}" and value is not None:
        return {**item, "data": Hex(value)}
    return item
