"""Register pages: the byte arrays some KVM structs carry, decoded into the registers they hold.

linux/kvm.h passes a few devices' state as opaque bytes: kvm_lapic_state.regs is the local APIC's
1 KiB register page, kvm_xsave.region the XSAVE area in the standard format; kvm_ioapic_state
gives each redirection entry twice (a u64 `bits` and its `fields`). Shown raw, a difference is
two hex dumps; decoded here, it names the register (`in.regs.tpr`, `in.region.mxcsr`,
`in.chip.ioapic.redirtbl[4].mask`).

The normalizer decodes the tracer's fields with `decode_pages`, and the tracer's text writer does
too, so both show the same registers. A document written before pages were decoded holds them
raw (`hex:...` strings, u32 lists); `decode_normalized` turns those into the same decoded form.
Nothing is dropped: bytes outside every register that are not zero are kept under `reserved`
(and the XSAVE components past AVX under `extended`), keyed by their offset.

Layouts: the xAPIC register map, Intel SDM vol. 3A, table 11-1; the XSAVE legacy area, header
and AVX state, Intel SDM vol. 1, 10.5.1 and 13.4-13.5 (AVX's offset, 576, is the same on every
processor). Offsets past AVX depend on the CPU (CPUID leaf 0xD) and are not named.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from types import MappingProxyType
from typing import TypeVar, cast

from conformance.model import symbolic
from conformance.model.document import Value
from conformance.model.events import Fields, FieldValue

_Section = TypeVar("_Section", Fields, dict[str, Value])

LAPIC_PAGE = "lapic_page"
XSAVE_AREA = "xsave_area"
# (struct, field) -> the register page that field holds once decoded
DECODED_FIELDS: Mapping[tuple[str, str], str] = MappingProxyType(
    {("kvm_lapic_state", "regs"): LAPIC_PAGE, ("kvm_xsave", "region"): XSAVE_AREA}
)
# The argument structs decode_pages changes: the two pages, and the IOAPIC's redirection table.
PAGED_STRUCTS = frozenset({"kvm_lapic_state", "kvm_xsave", "kvm_irqchip"})

_LAPIC_SIZE = 0x400
_LAPIC_STRIDE = 0x10  # each register sits at the start of a 16-byte line
# The xAPIC register map: (offset, name, registers in a row); the rows of 8 are the 256-bit
# ISR, TMR and IRR.
LAPIC_REGISTERS: tuple[tuple[int, str, int], ...] = (
    (0x020, "apic_id", 1),
    (0x030, "version", 1),
    (0x080, "tpr", 1),
    (0x090, "apr", 1),
    (0x0A0, "ppr", 1),
    (0x0B0, "eoi", 1),
    (0x0C0, "rrd", 1),
    (0x0D0, "ldr", 1),
    (0x0E0, "dfr", 1),
    (0x0F0, "svr", 1),
    (0x100, "isr", 8),
    (0x180, "tmr", 8),
    (0x200, "irr", 8),
    (0x280, "esr", 1),
    (0x2F0, "lvt_cmci", 1),
    (0x300, "icr_low", 1),
    (0x310, "icr_high", 1),
    (0x320, "lvt_timer", 1),
    (0x330, "lvt_thermal", 1),
    (0x340, "lvt_perf", 1),
    (0x350, "lvt_lint0", 1),
    (0x360, "lvt_lint1", 1),
    (0x370, "lvt_error", 1),
    (0x380, "timer_initial_count", 1),
    (0x390, "timer_current_count", 1),
    (0x3E0, "timer_divide_config", 1),
    (0x3F0, "self_ipi", 1),
)
_LAPIC_WORDS = frozenset(
    offset + _LAPIC_STRIDE * row for offset, _, rows in LAPIC_REGISTERS for row in range(rows)
)
_WORD = struct.Struct("<I")

_XSAVE_LEGACY = struct.Struct("<HHBxHQQII")  # fcw fsw ftw (reserved) fop fip fdp mxcsr mask
_XSAVE_LEGACY_NAMES = ("fcw", "fsw", "ftw", "fop", "fip", "fdp", "mxcsr", "mxcsr_mask")
# Every field of a decoded XSAVE area, in order.
XSAVE_FIELDS = (*_XSAVE_LEGACY_NAMES, "st", "xmm", "xstate_bv", "xcomp_bv", "ymm_hi128")
_XSAVE_HEADER = struct.Struct("<QQ")  # xstate_bv, xcomp_bv
_XSAVE_HEADER_OFFSET = 512
_ST_OFFSET, _ST_BYTES = 32, 10  # 8 x87 registers of 80 bits, one per 16 bytes
_XMM_OFFSET = 160
_YMM_OFFSET = 576  # state component 2: the upper 128 bits of YMM0-15
_EXTENDED_OFFSET = _YMM_OFFSET + 16 * 16
_EXTENDED_CHUNK = 64
# Byte ranges no register holds: ftw's high byte, each ST register's last 6 bytes, the legacy
# area's reserved and software-available tail, the header's reserved bytes.
_XSAVE_RESERVED = (
    (5, 6),
    *((_ST_OFFSET + 16 * i + _ST_BYTES, _ST_OFFSET + 16 * (i + 1)) for i in range(8)),
    (416, 512),
    (_XSAVE_HEADER_OFFSET + _XSAVE_HEADER.size, _YMM_OFFSET),
)
_U32 = 4
_XSAVE_WORDS = 1024  # kvm_xsave.region: __u32 region[1024]


def decode_pages(struct_name: str | None, fields: Fields) -> Fields:
    """The decoded fields of an argument of C type `struct_name`: its register pages (if it
    has any) as registers; `fields` itself otherwise."""
    if struct_name == "kvm_lapic_state":
        page = fields.get("regs")
        if isinstance(page, bytes) and len(page) == _LAPIC_SIZE:
            return {**fields, "regs": lapic_registers(page)}
    elif struct_name == "kvm_xsave":
        area = _xsave_bytes(fields.get("region"), fields.get("extra", b""))
        if area is not None:
            kept = {key: value for key, value in fields.items() if key != "extra"}
            return {**kept, "region": xsave_area(area)}
    elif struct_name == "kvm_irqchip":
        return _irqchip(fields)
    return fields


def decode_normalized(struct_name: str | None, section: Mapping[str, Value]) -> dict[str, Value]:
    """A normalized `in`/`out` section written before pages were decoded (LAPIC as a `hex:`
    string, XSAVE as u32 words), with its pages decoded as the normalizer decodes them now.
    A section already decoded, or of another struct, comes back equal."""
    shown = dict(section)
    if struct_name == "kvm_lapic_state":
        page = _hex_bytes(section.get("regs"))
        if page is not None and len(page) == _LAPIC_SIZE:
            shown["regs"] = _normalized("regs", lapic_registers(page))
    elif struct_name == "kvm_xsave":
        area = _xsave_bytes(section.get("region"), _hex_bytes(section.get("extra", [])))
        if area is not None:
            shown.pop("extra", None)
            shown["region"] = _normalized("region", xsave_area(area))
    elif struct_name == "kvm_irqchip":
        return _irqchip(shown)
    return shown


def lapic_registers(page: bytes) -> Fields:
    """The local APIC's 1 KiB page as its registers (32 bits each, at 16-byte strides)."""
    registers: Fields = {}
    for offset, name, rows in LAPIC_REGISTERS:
        words = [_word(page, offset + _LAPIC_STRIDE * row) for row in range(rows)]
        registers[name] = words[0] if rows == 1 else list[FieldValue](words)
    reserved: Fields = {
        f"{offset:#05x}": _word(page, offset)
        for offset in range(0, _LAPIC_SIZE, _U32)
        if offset not in _LAPIC_WORDS and _word(page, offset)
    }
    if reserved:
        registers["reserved"] = reserved
    return registers


def xsave_area(area: bytes) -> Fields:
    """An XSAVE area (standard format): the x87/SSE legacy area, the header, AVX's upper halves,
    and the later components as non-zero 64-byte lines by offset."""
    decoded: Fields = dict(zip(_XSAVE_LEGACY_NAMES, _XSAVE_LEGACY.unpack_from(area), strict=True))
    decoded["st"] = [_integer(area, _ST_OFFSET + 16 * i, _ST_BYTES) for i in range(8)]
    decoded["xmm"] = [_integer(area, _XMM_OFFSET + 16 * i, 16) for i in range(16)]
    decoded["xstate_bv"], decoded["xcomp_bv"] = _XSAVE_HEADER.unpack_from(
        area, _XSAVE_HEADER_OFFSET
    )
    decoded["ymm_hi128"] = [_integer(area, _YMM_OFFSET + 16 * i, 16) for i in range(16)]
    reserved: Fields = {
        f"{start:#05x}": area[start:end] for start, end in _XSAVE_RESERVED if any(area[start:end])
    }
    if reserved:
        decoded["reserved"] = reserved
    extended: Fields = {
        f"{start:#06x}": area[start : start + _EXTENDED_CHUNK]
        for start in range(_EXTENDED_OFFSET, len(area), _EXTENDED_CHUNK)
        if any(area[start : start + _EXTENDED_CHUNK])
    }
    if extended:
        decoded["extended"] = extended
    return decoded


def _irqchip(fields: _Section) -> _Section:
    """kvm_irqchip: the IOAPIC's redirection entries by their fields, without the same 64 bits
    again as `bits` (the union kvm.h declares each entry as). The same shape in the tracer's
    fields and in a normalized section."""
    chip = fields.get("chip")
    ioapic = chip.get("ioapic") if isinstance(chip, dict) else None
    table = ioapic.get("redirtbl") if isinstance(ioapic, dict) else None
    if not isinstance(table, list) or not isinstance(ioapic, dict):
        return fields
    entries = [
        entry["fields"] if isinstance(entry, dict) and "fields" in entry else entry
        for entry in table
    ]
    return cast(_Section, {**fields, "chip": {"ioapic": {**ioapic, "redirtbl": entries}}})


def _hex_bytes(value: Value | None) -> bytes | None:
    """A byte string as normalization writes it (`hex:...`, or a list of up to 16 bytes)."""
    if isinstance(value, str) and value.startswith(symbolic.HEX_BYTES):
        return bytes.fromhex(value.removeprefix(symbolic.HEX_BYTES))
    if isinstance(value, list) and all(isinstance(item, int) and 0 <= item < 256 for item in value):
        return bytes(item for item in value if isinstance(item, int))
    return None


def _xsave_bytes(region: object, extra: object) -> bytes | None:
    """kvm_xsave's 1024 u32 words and its variable tail (KVM_GET_XSAVE2) as one byte string."""
    if not isinstance(region, list) or not isinstance(extra, bytes):
        return None
    if len(region) != _XSAVE_WORDS or not all(isinstance(word, int) for word in region):
        return None
    return b"".join(_WORD.pack(word) for word in region) + extra


def _normalized(name: str, value: FieldValue) -> Value:
    """What the normalizer makes of a decoded field (numbers in hex or decimal by name)."""
    if isinstance(value, bytes):
        return symbolic.byte_string(value)
    if isinstance(value, dict):
        return {key: _normalized(key, item) for key, item in value.items()}
    if isinstance(value, list):
        return [_normalized(name, item) for item in value]
    return symbolic.number(value, name)


def _word(page: bytes, offset: int) -> int:
    value: int = _WORD.unpack_from(page, offset)[0]
    return value


def _integer(area: bytes, offset: int, size: int) -> int:
    return int.from_bytes(area[offset : offset + size], "little")
