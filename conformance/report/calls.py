"""A call in one short line: what it is, on which fd, and the few fields that tell it apart.

    KVM_SET_USER_MEMORY_REGION(vm, slot: 0)
    KVM_CREATE_VCPU(vm, 0) -> vcpu0
    KVM_GET_SUPPORTED_CPUID(kvm, nent: 64) = E2BIG
    mmap(len: 0x3000, fd: vcpu0) -> kvm_run:vcpu0
    KVM_RUN(vcpu0) -> KVM_EXIT_IO out 0x3f8 [0x48] (3 times)

Reports show context calls this way: the whole call (a 75-entry CPUID table, 18 registers) is
what the snapshot file holds, and a diff points at it by line.
"""

from __future__ import annotations

from collections.abc import Mapping

from conformance.model import calls
from conformance.model.document import Entry, Value
from conformance.report.values import cut, value_text

SUMMARY_WIDTH = 100
_SHORT_VALUE = 24  # a field's value in a summary longer than this is cut
_LONG_NAME = 40  # KVM_CAP_SET_IDENTITY_MAP_ADDR and its kind

# The `in:` fields that tell calls of one request apart (a slot, a gsi, a count), by request.
_IDENTIFYING_INPUTS: Mapping[str, tuple[str, ...]] = {
    "KVM_SET_USER_MEMORY_REGION": ("slot",),
    "KVM_SET_USER_MEMORY_REGION2": ("slot",),
    "KVM_SET_CPUID2": ("nent",),
    "KVM_GET_SUPPORTED_CPUID": ("nent",),
    "KVM_GET_EMULATED_CPUID": ("nent",),
    "KVM_GET_MSR_INDEX_LIST": ("nmsrs",),
    "KVM_GET_MSR_FEATURE_INDEX_LIST": ("nmsrs",),
    "KVM_SET_MSRS": ("nmsrs",),
    "KVM_GET_MSRS": ("nmsrs",),
    "KVM_IRQFD": ("gsi",),
    "KVM_IRQ_LINE": ("irq",),
    "KVM_IRQ_LINE_STATUS": ("irq",),
    "KVM_IOEVENTFD": ("addr", "len"),
    "KVM_REGISTER_COALESCED_MMIO": ("addr",),
    "KVM_UNREGISTER_COALESCED_MMIO": ("addr",),
    "KVM_ENABLE_CAP": ("cap",),
    "KVM_CREATE_DEVICE": ("type",),
    "KVM_SET_GSI_ROUTING": ("nr",),
    "KVM_SET_DEVICE_ATTR": ("group", "attr"),
    "KVM_GET_DEVICE_ATTR": ("group", "attr"),
    "KVM_HAS_DEVICE_ATTR": ("group", "attr"),
}
# The arguments of a memory call that tell it apart, in order.
_MEMORY_ARGUMENTS: Mapping[str, tuple[str, ...]] = {
    "mmap": ("addr", "len", "prot", "fd", "offset"),
    "munmap": ("addr", "len"),
    "mprotect": ("addr", "len", "prot"),
    "madvise": ("addr", "len", "advice"),
    "mremap": ("addr", "old_len", "new_len"),
    "eventfd2": ("initval",),
}


def call_summary(entry: Entry, width: int = SUMMARY_WIDTH) -> str:
    """The call in one line of at most `width` characters."""
    request = calls.request(entry)
    kind = str(entry.get("call", "?"))
    arguments: list[str] = []
    if kind == "ioctl":
        name = request or value_text(entry.get("req", "?"))
        arguments.append(value_text(entry.get("fd", "?")))
        if "arg" in entry:
            arguments.append(value_text(entry["arg"], _LONG_NAME))
        inputs = calls.section(entry, "in")
        arguments.extend(_fields(inputs, _IDENTIFYING_INPUTS.get(request, ())))
    else:
        name = kind
        if "path" in entry:
            arguments.append(value_text(entry["path"], _LONG_NAME))
        if "fd" in entry and kind not in _MEMORY_ARGUMENTS:
            arguments.append(value_text(entry["fd"]))
        arguments.extend(_fields(entry, _MEMORY_ARGUMENTS.get(kind, ())))
    text = f"{name}({', '.join(arguments)})"
    if "errno" in entry:
        text += f" = {value_text(entry['errno'])}"
    elif "ret" in entry:
        text += f" -> {value_text(entry['ret'])}"
    run_exit = calls.section(entry, "exit")
    if run_exit:
        text += f" -> {exit_summary(run_exit)}"
    repeat = entry.get("repeat")
    if isinstance(repeat, int) and repeat > 1:
        text += f" ({repeat} times)"
    return cut(text, width)


def exit_summary(run_exit: Mapping[str, Value]) -> str:
    """KVM_EXIT_IO out 0x3f8 [0x48]; KVM_EXIT_MMIO write 0xb8000; KVM_EXIT_HLT."""
    parts = [value_text(run_exit.get("reason", "?"))]
    if "port" in run_exit:
        parts.extend(value_text(run_exit[key]) for key in ("direction", "port") if key in run_exit)
    elif "phys_addr" in run_exit:
        parts.append("write" if run_exit.get("is_write") else "read")
        parts.append(value_text(run_exit["phys_addr"]))
    for key in ("type", "suberror"):
        if key in run_exit:
            parts.append(value_text(run_exit[key]))
    if "data" in run_exit:
        parts.append(value_text(run_exit["data"], _SHORT_VALUE))
    return " ".join(parts)


def _fields(fields: Mapping[str, Value], names: tuple[str, ...]) -> list[str]:
    return [f"{name}: {value_text(fields[name], _SHORT_VALUE)}" for name in names if name in fields]
