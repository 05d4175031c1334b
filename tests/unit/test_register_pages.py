"""Register pages decoded into registers: the LAPIC page, the XSAVE area, IOAPIC redirection
entries, from the tracer's bytes and from documents written before pages were decoded."""

from __future__ import annotations

import struct
from pathlib import Path

from conformance.compare.regression import compare_documents
from conformance.model import register_pages
from conformance.model.document import TraceCall, TraceDocument, Value
from conformance.model.events import FieldValue
from conformance.snapshot.store import read_document

REFERENCES = Path(__file__).parents[2] / "traces" / "qemu"


def _page(words: dict[int, int]) -> bytes:
    page = bytearray(0x400)
    for offset, value in words.items():
        struct.pack_into("<I", page, offset, value)
    return bytes(page)


def test_the_lapic_page_is_named_register_by_register() -> None:
    page = _page({0x20: 1 << 24, 0x80: 0x20, 0xF0: 0x1FF, 0x110: 0x4, 0x320: 0x400EC,
                  0x380: 0x10000, 0x390: 0x8000, 0x3E0: 0xB, 0x24: 0xDEAD})  # fmt: skip
    registers = register_pages.decode_pages("kvm_lapic_state", {"regs": page})["regs"]
    assert isinstance(registers, dict)
    assert registers["apic_id"] == 1 << 24
    assert registers["tpr"] == 0x20
    assert registers["svr"] == 0x1FF
    assert registers["isr"] == [0, 0x4, 0, 0, 0, 0, 0, 0]  # ISR bits 32-63 at 0x110
    assert registers["lvt_timer"] == 0x400EC
    assert (registers["timer_initial_count"], registers["timer_current_count"]) == (0x10000, 0x8000)
    assert registers["timer_divide_config"] == 0xB
    # A word no register holds is kept, by offset: nothing of the page is lost.
    assert registers["reserved"] == {"0x024": 0xDEAD}


def test_every_byte_of_the_lapic_page_is_in_a_register_or_reserved() -> None:
    page = bytes(range(256)) * 4
    registers = register_pages.lapic_registers(page)
    rebuilt = bytearray(0x400)
    for offset, name, _rows in register_pages.LAPIC_REGISTERS:
        values = registers[name]
        for row, value in enumerate(values if isinstance(values, list) else [values]):
            assert isinstance(value, int)
            struct.pack_into("<I", rebuilt, offset + 0x10 * row, value)
    reserved = registers["reserved"]
    assert isinstance(reserved, dict)
    for offset_text, value in reserved.items():
        assert isinstance(value, int)
        struct.pack_into("<I", rebuilt, int(offset_text, 16), value)
    assert bytes(rebuilt) == page


def test_the_xsave_area_names_the_legacy_registers_the_header_and_avx() -> None:
    area = bytearray(4096)
    struct.pack_into("<HHBxHQQII", area, 0, 0x37F, 0x1, 0xFF, 0x2, 0x1234, 0x5678, 0x1F80, 0xFFFF)
    area[32:42] = (7).to_bytes(10, "little")  # ST0
    area[160 + 16 : 160 + 32] = (0xAB << 120).to_bytes(16, "little")  # XMM1
    struct.pack_into("<Q", area, 512, 0x7)  # XSTATE_BV: x87, SSE, AVX
    area[576 + 32 : 576 + 48] = (0xCD).to_bytes(16, "little")  # YMM2's upper half
    area[2688] = 0x55  # a component past AVX (PKRU on Intel)
    area[470] = 0x1  # software-available legacy bytes
    words = list[FieldValue](struct.unpack("<1024I", bytes(area)))
    region = register_pages.decode_pages("kvm_xsave", {"region": words})["region"]
    assert isinstance(region, dict)
    assert (region["fcw"], region["fsw"], region["ftw"], region["fop"]) == (0x37F, 1, 0xFF, 2)
    assert (region["fip"], region["fdp"], region["mxcsr"]) == (0x1234, 0x5678, 0x1F80)
    assert region["st"] == [7, 0, 0, 0, 0, 0, 0, 0]
    xmm = region["xmm"]
    assert isinstance(xmm, list) and xmm[1] == 0xAB << 120
    assert region["xstate_bv"] == 0x7
    ymm = region["ymm_hi128"]
    assert isinstance(ymm, list) and ymm[2] == 0xCD
    extended = region["extended"]
    assert isinstance(extended, dict) and list(extended) == ["0x0a80"]
    reserved = region["reserved"]
    assert isinstance(reserved, dict) and list(reserved) == ["0x1a0"]


def test_ioapic_redirection_entries_are_given_once() -> None:
    pin: dict[str, FieldValue] = {"vector": 0, "mask": 1, "dest_id": 0}
    entry: dict[str, FieldValue] = {"bits": 0x10000, "fields": pin}
    fields: dict[str, FieldValue] = {
        "chip_id": 2,
        "chip": {"ioapic": {"id": 0, "redirtbl": [entry, entry]}},
    }
    decoded = register_pages.decode_pages("kvm_irqchip", fields)
    chip = decoded["chip"]
    assert isinstance(chip, dict)
    assert chip["ioapic"] == {"id": 0, "redirtbl": [pin, pin]}


RAW = Path(__file__).parents[1] / "fixtures" / "documents" / "raw_register_pages.yaml"
_PAGED = {
    "KVM_SET_LAPIC": "kvm_lapic_state",
    "KVM_SET_XSAVE": "kvm_xsave",
    "KVM_SET_IRQCHIP": "kvm_irqchip",
}


def _first(document: TraceDocument, request: str) -> TraceCall:
    return next(located.call for located in document.calls() if located.call.name == request)


def _section(call: TraceCall) -> dict[str, Value]:
    section = call.entry["in"]
    assert isinstance(section, dict)
    return section


def test_a_document_written_before_pages_were_decoded_reads_decoded() -> None:
    """QEMU's reference as recorded before this decoding held KVM_SET_LAPIC as one hex string
    and KVM_SET_XSAVE as 1024 words: read back, both come out as the normalizer decodes them
    now (the re-recorded reference's calls), and decoding again changes nothing."""
    raw, decoded = read_document(RAW), read_document(REFERENCES / "tiny-bios.yaml")
    for request, struct_name in _PAGED.items():
        old = _section(_first(raw, request))
        assert isinstance(old.get("regs", old.get("region", old.get("chip"))), str | list | dict)
        upgraded = register_pages.decode_normalized(struct_name, old)
        assert upgraded != old
        assert register_pages.decode_normalized(struct_name, upgraded) == upgraded
        new = _section(_first(decoded, request))
        assert upgraded.keys() == new.keys(), request
    registers = register_pages.decode_normalized(
        "kvm_lapic_state", _section(_first(raw, "KVM_SET_LAPIC"))
    )["regs"]
    assert isinstance(registers, dict)
    assert registers["dfr"] == 0xFFFFFFFF and registers["lvt_lint0"] == 0x10000


def test_a_raw_page_and_a_decoded_one_compare_equal_and_name_the_register() -> None:
    """Regression between the old document (raw pages) and the same calls decoded: no
    difference for the same bytes; a changed TPR is named as such."""
    raw = read_document(RAW)
    decoded = TraceDocument(raw.source, {})
    for role, calls in raw.threads.items():
        decoded.threads[role] = []
        for call in calls:
            section = register_pages.decode_normalized(_PAGED[call.name], _section(call))
            decoded.threads[role].append(TraceCall({**call.entry, "in": section}, call.line))
    assert compare_documents(raw, decoded, scenario="tiny-bios").differences == []
    for calls in decoded.threads.values():
        for index, call in enumerate(calls):
            if call.name == "KVM_SET_LAPIC":
                section = _section(call)
                regs = section["regs"]
                assert isinstance(regs, dict)
                changed: dict[str, Value] = {**section, "regs": {**regs, "tpr": 0x30}}
                calls[index] = TraceCall({**call.entry, "in": changed}, call.line)
    [difference] = compare_documents(raw, decoded, scenario="tiny-bios").differences
    assert (difference.call_name, difference.path) == ("KVM_SET_LAPIC", "in.regs.tpr")
    assert (difference.expected, difference.actual) == (0, 0x30)
