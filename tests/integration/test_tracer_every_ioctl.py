"""Decoder tests against the real kernel: every x86 ioctl of the ABI table this host supports,
issued through the VMM core under the tracer (tests/fixtures/tracees/every_ioctl.py), must
decode to exactly the fields the VMM passed (inputs, at entry) and received (outputs, at exit).

The expected fields come from the tracee's raw bytes through ctypes itself: instances built with
from_buffer_copy and read by attribute, not the tracer's offset-and-struct-module walk
(conformance/tracer/fields.py). What both share is the ABI layouts and the conventions of
events.Fields, restated here: anonymous members merged into their parent, a union with a
discriminator decoded as its selected member only, other unions of <= 16 bytes as every member
but the pad* aliases, bigger ones as bytes, byte arrays as bytes, flexible arrays replaced by
their real entries.
"""

from __future__ import annotations

import ctypes
import errno
import json
import sys
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from conformance.abi import _generated as abi
from conformance.abi.ioctls import IOCTLS, ArgKind, Direction, IoctlSpec
from conformance.model.events import Event, Fields, FieldValue, Ioctl
from conformance.tracer import trace

_SCRIPT = Path(__file__).parent.parent / "fixtures" / "tracees" / "every_ioctl.py"
pytestmark = [pytest.mark.needs_ptrace, pytest.mark.needs_kvm]

# What a host without the feature answers (the brief of the decoder tests: these mean
# "unsupported here", any other outcome means the ioctl was exercised).
_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOTTY, errno.ENXIO, errno.EOPNOTSUPP})
# Measured on the development host (kernel 6.18, paravirtual KVM, no Hyper-V, Xen, SMM or
# nested support compiled in or offered): 83 of the table's 100 x86 ioctls exercised.
_MIN_EXERCISED = 83

_SMALL_UNION_SIZE = 16
_BYTE_TYPES: tuple[type[Any], ...] = (ctypes.c_char, ctypes.c_uint8, ctypes.c_int8)
# Unions whose meaningful member another field names (values from linux/kvm.h).
_DISCRIMINATED: Mapping[tuple[type[Any], str], tuple[str, Mapping[int, str]]] = {
    (abi.kvm_irq_routing_entry, "u"): (
        "type",
        {1: "irqchip", 2: "msi", 3: "adapter", 4: "hv_sint", 5: "xen_evtchn"},
    ),
    (abi.kvm_irqchip, "chip"): ("chip_id", {0: "pic", 1: "pic", 2: "ioapic"}),
    (abi.kvm_nested_state, "hdr"): ("format", {0: "vmx", 1: "svm"}),
}
_KERNEL_READS = (Direction.WRITE, Direction.READ_WRITE)
_KERNEL_WRITES = (Direction.READ, Direction.READ_WRITE)


def _fields_of(instance: Any) -> Fields:
    """A ctypes struct/union instance as events.Fields, read through its attributes."""
    cls = type(instance)
    anonymous = getattr(cls, "_anonymous_", ())
    fields: Fields = {}
    for name, field_type, *_bits in cls._fields_:
        if ctypes.sizeof(field_type) == 0:
            continue  # a flexible array or its __empty_ marker: entries are added separately
        if issubclass(cls, ctypes.Union) and name.startswith("pad"):
            continue
        if name in anonymous:
            member = getattr(instance, name)
            opaque = _is_opaque_union(field_type)
            fields.update({"_raw": bytes(member)} if opaque else _fields_of(member))
        elif (cls, name) in _DISCRIMINATED:
            selector, members = _DISCRIMINATED[(cls, name)]
            union = getattr(instance, name)
            chosen = members.get(_int(fields[selector]))
            fields[name] = {chosen: _value_of(getattr(union, chosen))} if chosen else bytes(union)
        elif issubclass(field_type, ctypes.Array) and field_type._type_ is ctypes.c_char:
            # Reading a char array by attribute stops at its first NUL: view it whole.
            fields[name] = bytes(field_type.from_buffer(instance, getattr(cls, name).offset))
        else:
            fields[name] = _value_of(getattr(instance, name))
    return fields


def _value_of(value: Any) -> FieldValue:
    if value is None:  # a NULL c_void_p
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, ctypes.Array):
        if value._type_ in _BYTE_TYPES:
            return bytes(value)
        return [_value_of(item) for item in value]
    if isinstance(value, ctypes.Union) and _is_opaque_union(type(value)):
        return bytes(value)
    return _fields_of(value)


def _is_opaque_union(cls: type[Any]) -> bool:
    return issubclass(cls, ctypes.Union) and ctypes.sizeof(cls) > _SMALL_UNION_SIZE


def _int(value: FieldValue) -> int:
    assert isinstance(value, int)
    return value


def _entry_type(cls: type[Any], name: str) -> type[Any] | None:
    """The element type of flexible array `name`, looked for through anonymous members."""
    for field_name, field_type, *_bits in cls._fields_:
        if field_name == name:
            return field_type._type_  # type: ignore[no-any-return]
        if field_name in getattr(cls, "_anonymous_", ()):
            found = _entry_type(field_type, name)
            if found is not None:
                return found
    return None


def _entries(spec: IoctlSpec, header: Fields, raw: bytes, bitmap: bytes) -> FieldValue | None:
    """The variable part as the VMM's buffer holds it; None where there is none."""
    struct = spec.struct
    assert struct is not None and spec.entries_field is not None
    if spec.entries_field == "dirty_bitmap":  # out of line: the tracee printed it apart
        return bitmap
    start = getattr(struct, spec.entries_field).offset
    if spec.name in ("KVM_GET_XSAVE2", "KVM_SET_XSAVE"):  # the buffer is KVM_CAP_XSAVE2 long
        return raw[start:] or None
    if spec.name in ("KVM_GET_NESTED_STATE", "KVM_SET_NESTED_STATE"):  # size counts the header
        return raw[start : _int(header["size"])]
    count = _int(header[spec.count_field or ""])
    if spec.name == "KVM_SET_SIGNAL_MASK":  # len counts bytes
        return raw[start : start + count]
    item = _entry_type(struct, spec.entries_field)
    assert item is not None
    size = ctypes.sizeof(item)
    values = [item.from_buffer_copy(raw, start + i * size) for i in range(count)]
    return [_fields_of(v) if isinstance(v, ctypes.Structure) else v.value for v in values]


def _expected(spec: IoctlSpec, call: Mapping[str, Any], *, at_entry: bool) -> Fields | None:
    """What the tracer must report as inputs (at_entry) or outputs for one printed call."""
    if spec.arg_kind in (ArgKind.INTEGER, ArgKind.NONE):
        return None
    if spec.direction not in (_KERNEL_READS if at_entry else _KERNEL_WRITES):
        return None
    raw = bytes.fromhex(call["in" if at_entry else "out"])
    if spec.struct is None:  # a pointer to a bare __u64
        return {"value": int.from_bytes(raw, "little")}
    fields = _fields_of(spec.struct.from_buffer_copy(raw[: ctypes.sizeof(spec.struct)]))
    if at_entry:  # the kernel reads the entries of what it is given, and GET_MSRS' indices
        with_entries = spec.direction is Direction.WRITE or spec.name == "KVM_GET_MSRS"
    else:  # on failure the kernel has written the header at most
        with_entries = call["errno"] is None
    if spec.arg_kind is ArgKind.VARIABLE and with_entries and spec.entries_field:
        bitmap = bytes.fromhex(call.get("bitmap_in" if at_entry else "bitmap_out", ""))
        entries = _entries(spec, fields, raw, bitmap)
        if entries is not None:
            fields[spec.entries_field] = entries
    return fields


@pytest.fixture(scope="module")
def traced(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[list[dict[str, Any]], list[Ioctl]]:
    """The tracee's printed calls and the tracer's Ioctl events, from one traced run."""
    events: list[Event] = []
    # A file, not a pipe: the tracee prints more than a pipe holds while the tracer waits.
    output = tmp_path_factory.mktemp("every_ioctl") / "calls.jsonl"
    with output.open("w") as sink:
        outcome = trace([sys.executable, str(_SCRIPT)], events.append, stdout=sink.fileno())
    assert outcome.exit_status == 0
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    return lines, [event for event in events if isinstance(event, Ioctl)]


def test_every_ioctl_decodes_as_the_vmm_passed_and_received(
    traced: tuple[list[dict[str, Any]], list[Ioctl]],
) -> None:
    lines, ioctls = traced
    assert [event for event in ioctls if event.name is None] == []
    calls: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in lines:
        if "skipped" not in line:
            calls[line["name"]].append(line)
    events: dict[str, list[Ioctl]] = defaultdict(list)
    for event in ioctls:
        events[event.name or ""].append(event)
    assert sorted(events) == sorted(calls), "the tracer saw other ioctls than the tracee issued"
    mismatches: list[str] = []
    for name, issued in calls.items():
        spec = IOCTLS[name]
        assert len(events[name]) == len(issued), name
        for number, (call, event) in enumerate(zip(issued, events[name], strict=True)):
            where = f"{name} #{number}"
            got = (event.fd, event.arg, event.errno, event.ret if event.errno is None else -1)
            if got != (call["fd"], call["arg"], call["errno"], call["ret"]):
                mismatches.append(f"{where}: fd/arg/errno/ret {got}")
            for label, actual, at_entry in (
                ("inputs", event.inputs, True),
                ("outputs", event.outputs, False),
            ):
                expected = _expected(spec, call, at_entry=at_entry)
                if actual != expected:
                    mismatches.append(
                        f"{where} {label}:\n  traced   {actual}\n  expected {expected}"
                    )
    assert not mismatches, "\n".join(mismatches)


def test_every_x86_ioctl_is_exercised_or_skipped_for_a_reason(
    traced: tuple[list[dict[str, Any]], list[Ioctl]],
) -> None:
    lines, _ = traced
    x86 = sorted(spec.name for spec in IOCTLS.values() if spec.x86)
    outcomes: dict[str, list[str]] = defaultdict(list)
    for line in lines:
        if "skipped" in line:
            outcomes[line["name"]].append(f"not issued: {line['skipped']}")
        elif line["errno"] in _UNSUPPORTED:
            outcomes[line["name"]].append(f"host refused: {errno.errorcode[line['errno']]}")
        else:
            outcomes[line["name"]].append("exercised")
    assert sorted(outcomes) == x86, "every x86 ioctl of the table is issued or skipped"
    exercised = [name for name in x86 if "exercised" in outcomes[name]]
    skipped = {name: sorted(set(outcomes[name])) for name in x86 if name not in exercised}
    report = "\n".join(f"  {name}: {', '.join(why)}" for name, why in skipped.items())
    print(f"\n{len(exercised)} of {len(x86)} x86 ioctls exercised; skipped:\n{report}")
    assert len(exercised) >= _MIN_EXERCISED, (
        f"{len(exercised)} of the table's {len(x86)} x86 ioctls exercised, expected at least "
        f"{_MIN_EXERCISED}; skipped:\n{report}"
    )
