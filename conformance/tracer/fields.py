"""ctypes struct bytes -> `events.Fields`: C field names to ints, nested dicts and lists.

The layouts are the generated ones (conformance/abi/_generated.py); nothing here knows a
struct by heart except which member of a union is meaningful, which C cannot say. The choices:

- Anonymous members (`_anonymous_`) are merged into their parent, as C code spells them
  (`kvm_msrs.entries`, `kvm_irq_level.irq`).
- A union with a discriminator field in the struct around it decodes only the member that the
  discriminator selects (`_DISCRIMINATED`): kvm_irq_routing_entry.u by `type`,
  kvm_irqchip.chip by `chip_id`, kvm_nested_state.hdr by `format`, the KVM_EXIT_HYPERV and
  KVM_EXIT_XEN payloads by `type`. An unknown discriminator value keeps the union's raw bytes.
- A small union (<= 16 bytes, e.g. kvm_irq_level's irq/status, kvm_dirty_log's dirty_bitmap)
  decodes every member except the `pad*` aliases that exist only for size.
- Any other union (kvm_xen_hvm_attr.u, the s390 ones) is kept as its raw bytes.
- Arrays of bytes (c_char / __u8 / __s8) become `bytes` (a c_char field read through ctypes
  would stop at the first NUL); other arrays become lists.
- Zero-length flexible arrays and the `__empty_*` markers next to them are left out here: the
  argument decoder reads the entries with their real count.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Mapping
from typing import Any

from conformance.abi import _generated as abi
from conformance.model.events import Fields, FieldValue

CType = type[Any]

_SMALL_UNION_SIZE = 16
_BYTE_TYPES: tuple[CType, ...] = (ctypes.c_char, ctypes.c_uint8, ctypes.c_int8)

# (struct, union field) -> (discriminator field, {value: member}). Values from linux/kvm.h.
_DISCRIMINATED: Mapping[tuple[CType, str], tuple[str, Mapping[int, str]]] = {
    (abi.kvm_irq_routing_entry, "u"): (
        "type",
        {
            abi.KVM_IRQ_ROUTING_IRQCHIP: "irqchip",
            abi.KVM_IRQ_ROUTING_MSI: "msi",
            abi.KVM_IRQ_ROUTING_S390_ADAPTER: "adapter",
            abi.KVM_IRQ_ROUTING_HV_SINT: "hv_sint",
            abi.KVM_IRQ_ROUTING_XEN_EVTCHN: "xen_evtchn",
        },
    ),
    # KVM_IRQCHIP_PIC_MASTER 0, KVM_IRQCHIP_PIC_SLAVE 1, KVM_IRQCHIP_IOAPIC 2
    (abi.kvm_irqchip, "chip"): ("chip_id", {0: "pic", 1: "pic", 2: "ioapic"}),
    # KVM_STATE_NESTED_FORMAT_VMX 0, KVM_STATE_NESTED_FORMAT_SVM 1
    (abi.kvm_nested_state, "hdr"): ("format", {0: "vmx", 1: "svm"}),
    (abi.kvm_hyperv_exit, "u"): (
        "type",
        {
            abi.KVM_EXIT_HYPERV_SYNIC: "synic",
            abi.KVM_EXIT_HYPERV_HCALL: "hcall",
            abi.KVM_EXIT_HYPERV_SYNDBG: "syndbg",
        },
    ),
    (abi.kvm_xen_exit, "u"): ("type", {abi.KVM_EXIT_XEN_HCALL: "hcall"}),
}
# Unions that are a variable-length tail, read by the argument decoder with their real size.
_VARIABLE_TAILS: frozenset[tuple[CType, str]] = frozenset({(abi.kvm_nested_state, "data")})


def decode(struct_type: CType, raw: bytes) -> Fields:
    """The fields of one struct (or union) held in `raw` (at least sizeof(struct_type) bytes)."""
    plan = _flat_plans.get(struct_type, _UNPLANNED)
    if plan is _UNPLANNED:
        plan = _flat_plans[struct_type] = _flat_plan(struct_type)
    if plan is not None:
        layout, names = plan
        return dict(zip(names, layout.unpack_from(raw), strict=True))
    return _decode_members(struct_type, memoryview(raw), 0)


_FlatPlan = tuple[struct.Struct, tuple[str, ...]]
_UNPLANNED: _FlatPlan | None = (struct.Struct(""), ())
# Struct-module codes for the scalar ctypes a flat struct may hold, by (size, signed).
_SCALAR_CODES = {
    (size, signed): code.lower() if signed else code
    for size, code in ((1, "B"), (2, "H"), (4, "I"), (8, "Q"))
    for signed in (False, True)
}
_flat_plans: dict[CType, _FlatPlan | None] = {}


def _flat_plan(struct_type: CType) -> _FlatPlan | None:
    """One struct.Struct for a struct of plain scalars and byte arrays (kvm_run's io member,
    kvm_regs...), decoding exactly as the general walk below does, in one C call: KVM_RUN
    exits decode such a struct at every stop. None for anything the walk must handle.
    """
    anonymous: tuple[str, ...] = getattr(struct_type, "_anonymous_", ())
    if not issubclass(struct_type, ctypes.Structure) or anonymous:
        return None
    codes = ["<"]
    names: list[str] = []
    position = 0
    for name, field_type, *bits in struct_type._fields_:
        descriptor = getattr(struct_type, name)
        if bits or name.startswith("__empty_") or descriptor.size == 0:
            return None
        if descriptor.offset < position:
            return None
        codes.append(f"{descriptor.offset - position}x" if descriptor.offset > position else "")
        array_type: Any = field_type
        if issubclass(field_type, ctypes.Array) and array_type._type_ in _BYTE_TYPES:
            codes.append(f"{descriptor.size}s")
        elif issubclass(field_type, (ctypes.Array, ctypes.Structure, ctypes.Union)):
            return None
        elif (code := _SCALAR_CODES.get((descriptor.size, field_type in _SIGNED))) is not None:
            codes.append(code)
        else:
            return None
        names.append(name)
        position = descriptor.offset + descriptor.size
    return struct.Struct("".join(codes)), tuple(names)


def element_type(struct_type: CType, name: str) -> CType:
    """The element type of array field `name`, searched through anonymous members too."""
    for field_name, field_type, *_bits in struct_type._fields_:
        if field_name == name:
            return field_type._type_  # type: ignore[no-any-return]
        if field_name in getattr(struct_type, "_anonymous_", ()):
            try:
                return element_type(field_type, name)
            except KeyError:
                continue
    raise KeyError(f"{struct_type.__name__} has no array field {name!r}")


def decode_array(item_type: CType, raw: bytes, count: int) -> FieldValue:
    """`count` elements of `item_type` from `raw`: bytes, a list of ints, or a list of Fields."""
    if item_type in _BYTE_TYPES:
        return bytes(raw[:count])
    size = ctypes.sizeof(item_type)
    view = memoryview(raw)
    return [_decode_value(item_type, view, i * size) for i in range(count)]


def _decode_members(struct_type: CType, raw: memoryview, base: int) -> Fields:
    fields: Fields = {}
    anonymous = getattr(struct_type, "_anonymous_", ())
    is_union = issubclass(struct_type, ctypes.Union)
    instance: Any = None  # built only when a bit-field needs ctypes to extract it
    for name, field_type, *bits in struct_type._fields_:
        descriptor = getattr(struct_type, name)
        offset = base + descriptor.offset
        if (
            name.startswith("__empty_")
            or descriptor.size == 0
            or (is_union and name.startswith("pad"))
        ):
            continue
        if bits:
            if instance is None:
                instance = struct_type.from_buffer_copy(
                    raw[base : base + ctypes.sizeof(struct_type)]
                )
            fields[name] = getattr(instance, name)
        elif name in anonymous:
            fields.update(_anonymous_member(field_type, raw, offset))
        elif (struct_type, name) in _VARIABLE_TAILS:
            continue
        elif (struct_type, name) in _DISCRIMINATED:
            fields[name] = _selected_member(struct_type, name, fields, raw, offset)
        else:
            fields[name] = _decode_value(field_type, raw, offset)
    return fields


def _anonymous_member(member_type: CType, raw: memoryview, offset: int) -> Fields:
    if issubclass(member_type, ctypes.Union) and ctypes.sizeof(member_type) > _SMALL_UNION_SIZE:
        return {"_raw": bytes(raw[offset : offset + ctypes.sizeof(member_type)])}
    return _decode_members(member_type, raw, offset)


def _selected_member(
    struct_type: CType, union_name: str, decoded: Fields, raw: memoryview, offset: int
) -> FieldValue:
    discriminator, members = _DISCRIMINATED[(struct_type, union_name)]
    union_type = dict((n, t) for n, t, *_ in struct_type._fields_)[union_name]
    selector = decoded.get(discriminator)
    member = members.get(selector) if isinstance(selector, int) else None
    if member is None:
        return bytes(raw[offset : offset + ctypes.sizeof(union_type)])
    member_type = dict((n, t) for n, t, *_ in union_type._fields_)[member]
    return {member: _decode_value(member_type, raw, offset)}


def _decode_value(value_type: CType, raw: memoryview, offset: int) -> FieldValue:
    if issubclass(value_type, ctypes.Array):
        array_type: Any = value_type  # typeshed types _type_/_length_ as instance attributes
        item_type: CType = array_type._type_
        length: int = array_type._length_
        size = ctypes.sizeof(value_type)
        if item_type in _BYTE_TYPES:
            return bytes(raw[offset : offset + size])
        item_size = ctypes.sizeof(item_type)
        return [_decode_value(item_type, raw, offset + i * item_size) for i in range(length)]
    if issubclass(value_type, ctypes.Union):
        if ctypes.sizeof(value_type) > _SMALL_UNION_SIZE:
            return bytes(raw[offset : offset + ctypes.sizeof(value_type)])
        return _decode_members(value_type, raw, offset)
    if issubclass(value_type, ctypes.Structure):
        return _decode_members(value_type, raw, offset)
    return _scalar(value_type, raw, offset)


def _scalar(value_type: CType, raw: memoryview, offset: int) -> int:
    size = ctypes.sizeof(value_type)
    chunk = raw[offset : offset + size]
    signed = value_type in _SIGNED
    return int.from_bytes(chunk, "little", signed=signed)


_SIGNED: frozenset[CType] = frozenset(
    {ctypes.c_int8, ctypes.c_int16, ctypes.c_int32, ctypes.c_int64, ctypes.c_long, ctypes.c_int}
)
