"""The host profile: what the host answered a trace's VMM, as data of its own (`source: host:`).

Built from the trace's own answers (`abi.host_relations.HOST_ANSWERS`: supported CPUID, MSR
lists, feature MSRs, capabilities, sizes, the TSC frequency) and from the identity facts the
capture adds (kernel, CPU model name). The CPU's vendor, family, model and stepping are read
from the supported CPUID where the VMM asked for it (KVM passes leaves 0 and 1 on), else from
the facts. The answering CPU's APIC-ID fields are cleared in the stored table: they say which
host CPU ran the ioctl, not what the host is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from conformance.abi.host_relations import (
    EXTENSIONS,
    HOST_ANSWERS,
    SIGNATURE_LEAF,
    VENDOR_LEAF,
    XSAVE_SIZE_CAPABILITY,
    answering_cpu_bits,
)
from conformance.model.document import Entry, Hex, TraceDocument, Value

HOST = "host"  # the key of `source:` that holds the profile
_REGISTERS = ("eax", "ebx", "ecx", "edx")
CpuidKey = tuple[int, int]


def build_profile(document: TraceDocument, facts: Mapping[str, Value]) -> Entry:
    """The profile of the host `document` was traced on: `facts` (kernel, cpu, ...) and every
    answer the trace holds."""
    profile: Entry = dict(facts)
    extensions: dict[str, Value] = {}
    for located in document.calls():
        entry = located.entry
        if entry.get("call") != "ioctl" or "errno" in entry:
            continue
        request = entry.get("req")
        if request == "KVM_CHECK_EXTENSION" and isinstance(entry.get("arg"), str):
            extensions.setdefault(str(entry["arg"]), _field(entry, "out.ret") or 0)
            continue
        for answer in HOST_ANSWERS:
            if answer.request != request or answer.key in profile:
                continue
            if answer.fd is not None and entry.get("fd") != answer.fd:
                continue
            value = _field(entry, answer.field)
            if value is not None:
                profile[answer.key] = value
    if extensions:
        profile[EXTENSIONS] = extensions
        xsave = extensions.get(XSAVE_SIZE_CAPABILITY)
        if isinstance(xsave, int) and xsave:
            profile["xsave_size"] = Hex(xsave)
    table = profile.get("supported_cpuid")
    if isinstance(table, list):
        profile["supported_cpuid"] = [
            _without_cpu_identity(e) for e in table if isinstance(e, dict)
        ]
        profile.update(_cpu_identity(cpuid_table(profile)))
    return profile


def _field(entry: Entry, path: str) -> Value | None:
    value: Value | None = entry
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _without_cpu_identity(entry: Mapping[str, Value]) -> Entry:
    """A supported-CPUID entry without padding and with the answering CPU's fields cleared."""
    function, index = entry.get("function"), entry.get("index")
    kept: Entry = {}
    for name in ("function", "index", "flags", *_REGISTERS):
        value = entry.get(name)
        if isinstance(value, int) and isinstance(function, int) and isinstance(index, int):
            bits = answering_cpu_bits(function, index, name) if name in _REGISTERS else 0
            kept[name] = Hex(value & ~bits)
    return kept


def _cpu_identity(table: Mapping[CpuidKey, Mapping[str, int]]) -> Entry:
    """Vendor, family, model and stepping as CPUID leaves 0 and 1 give them (SDM vol. 2A)."""
    identity: Entry = {}
    leaf0 = table.get((VENDOR_LEAF, 0))
    if leaf0 is not None:
        words = (leaf0.get("ebx", 0), leaf0.get("edx", 0), leaf0.get("ecx", 0))
        raw = b"".join(word.to_bytes(4, "little") for word in words)
        vendor = raw.decode("ascii", errors="replace").strip("\0")
        if vendor.isalnum():
            identity["vendor"] = vendor
    leaf1 = table.get((SIGNATURE_LEAF, 0))
    if leaf1 is not None:
        eax = leaf1.get("eax", 0)
        base_family, base_model = (eax >> 8) & 0xF, (eax >> 4) & 0xF
        family = base_family + ((eax >> 20) & 0xFF if base_family == 0xF else 0)
        extended = base_family in (0x6, 0xF)
        identity["family"] = family
        identity["model"] = base_model | (((eax >> 16) & 0xF) << 4 if extended else 0)
        identity["stepping"] = eax & 0xF
    return identity


@dataclass(frozen=True, slots=True)
class HostProfile:
    """A document's profile as a reader wants it."""

    facts: Mapping[str, Value]

    @classmethod
    def of(cls, document: TraceDocument) -> HostProfile:
        found = document.source.get(HOST)
        return cls(found if isinstance(found, dict) else {})

    def get(self, key: str) -> Value | None:
        return self.facts.get(key)

    @property
    def cpuid(self) -> dict[CpuidKey, dict[str, int]]:
        return cpuid_table(self.facts)

    def feature_msr(self, index: int) -> int | None:
        for item in _list(self.facts.get("feature_msrs")):
            if isinstance(item, dict) and item.get("index") == index:
                data = item.get("data")
                return data if isinstance(data, int) else None
        return None

    @property
    def extensions(self) -> Mapping[str, Value]:
        found = self.facts.get(EXTENSIONS)
        return found if isinstance(found, dict) else {}

    def cpuid_entries(self) -> int | None:
        table = self.facts.get("supported_cpuid")
        return len(table) if isinstance(table, list) else None

    @property
    def name(self) -> str:
        """How the host is called in a sentence: its CPU model, else its vendor."""
        for key in ("cpu", "vendor"):
            value = self.facts.get(key)
            if isinstance(value, str) and value:
                return value
        return "an unknown host"


def cpuid_table(profile: Mapping[str, Value]) -> dict[CpuidKey, dict[str, int]]:
    """The supported CPUID of a profile keyed by (function, index); the first entry wins."""
    table: dict[CpuidKey, dict[str, int]] = {}
    for entry in _list(profile.get("supported_cpuid")):
        if not isinstance(entry, dict):
            continue
        function, index = entry.get("function"), entry.get("index")
        if isinstance(function, int) and isinstance(index, int):
            fields = {k: v for k, v in entry.items() if isinstance(v, int)}
            table.setdefault((function, index), fields)
    return table


def _list(value: Value | None) -> list[Value]:
    return value if isinstance(value, list) else []


# CPUID vendor strings and the short names host classes are written with.
_VENDOR_CLASSES = {
    "GenuineIntel": "intel",
    "AuthenticAMD": "amd",
    "HygonGenuine": "hygon",
    "CentaurHauls": "centaur",
}


def host_class(profile: HostProfile) -> str | None:
    """The kind of host a per-host variant snapshot is kept for (`NAME.intel.yaml`): the CPU
    vendor, which is what picks the paths VMMs take (QEMU's CPU model, a vendor's MSRs)."""
    vendor = profile.get("vendor")
    if not isinstance(vendor, str) or not vendor:
        return None
    return _VENDOR_CLASSES.get(vendor, vendor.lower())
