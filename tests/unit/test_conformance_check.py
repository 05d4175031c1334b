"""The conformance check on small hand-written documents: order, fields, rules, layout, HTML."""

from __future__ import annotations

from pathlib import Path

import pytest

from conformance.compare.alignment import align
from conformance.compare.allowances import AllowancesError, load_allowances
from conformance.compare.conformance import compare_with_reference
from conformance.model.document import Entry, Hex, TraceCall, TraceDocument, Value
from conformance.report.deviations import render_conformance
from conformance.report.html import render_html


def _document(tool: str, **threads: list[Entry]) -> TraceDocument:
    return TraceDocument(
        {"tool": tool},
        {role: [TraceCall(entry) for entry in calls] for role, calls in threads.items()},
    )


def _ioctl(req: str, fd: str = "vm", **fields: Value) -> Entry:
    return {"call": "ioctl", "fd": fd, "req": req, **fields}


def _region(slot: int, gpa: int, size: int, address: str, flags: list[str] | None = None) -> Entry:
    fields: Entry = {
        "slot": slot, "flags": list[Value](flags or []), "guest_phys_addr": Hex(gpa),
        "memory_size": Hex(size), "userspace_addr": address,
    }  # fmt: skip
    return {"call": "ioctl", "fd": "vm", "req": "KVM_SET_USER_MEMORY_REGION", "in": fields}


_OPEN: Entry = {"call": "open", "path": "/dev/kvm", "flags": ["O_RDWR"], "ret": "kvm"}
_CREATE_VM = _ioctl("KVM_CREATE_VM", fd="kvm", arg=0, ret="vm")
_RESERVE: Entry = {
    "call": "mmap", "len": Hex(1075838976), "prot": ["PROT_NONE"],
    "flags": ["MAP_PRIVATE", "MAP_ANONYMOUS"], "ret": "region0",
}  # fmt: skip
_RAM_IN_RESERVATION: Entry = {
    "call": "mmap", "addr": "region0+0x0", "len": Hex(1 << 30), "prot": ["PROT_READ", "PROT_WRITE"],
    "flags": ["MAP_PRIVATE", "MAP_FIXED", "MAP_ANONYMOUS"], "ret": "ram0",
}  # fmt: skip
_QEMU = _document(
    "qemu",
    main=[
        _OPEN,
        _ioctl("KVM_CHECK_EXTENSION", fd="kvm", arg="KVM_CAP_USER_MEMORY", out={"ret": 1}),
        _CREATE_VM,
        _ioctl("KVM_SET_TSS_ADDR", arg=Hex(0xFEFFD000)),
        _RESERVE,
        _RAM_IN_RESERVATION,
        _region(0, 0, 1 << 30, "ram0+0x0"),
        _region(1, 0xFFFC0000, 0x40000, "ram1+0x0", ["KVM_MEM_READONLY"]),
    ],
)


def test_a_subsequence_in_order_with_equal_inputs_conforms() -> None:
    subject = _document("vmm", main=[_OPEN, _CREATE_VM, _RESERVE, _RAM_IN_RESERVATION,
                                     _region(0, 0, 1 << 30, "ram0+0x0")])  # fmt: skip
    result = compare_with_reference(subject, _QEMU)
    assert result.ok and result.deviations == []


def test_the_nearest_reference_call_is_chosen_and_its_field_named() -> None:
    dirty_logged = _region(0, 0, 1 << 30, "ram0+0x0", ["KVM_MEM_LOG_DIRTY_PAGES"])
    subject = _document("vmm", main=[_OPEN, _CREATE_VM, dirty_logged])
    result = compare_with_reference(subject, _QEMU)
    [deviation] = result.failures
    assert (deviation.call, deviation.path, deviation.reference_index) == (
        "KVM_SET_USER_MEMORY_REGION", "in.flags", 6
    )  # fmt: skip
    assert "in.flags: QEMU [], subject [KVM_MEM_LOG_DIRTY_PAGES]" in render_conformance(result, "x")


def test_a_call_out_of_order_is_extra_and_says_so() -> None:
    subject = _document("vmm", main=[_OPEN, _ioctl("KVM_SET_TSS_ADDR", arg=Hex(0xFEFFD000)),
                                     _CREATE_VM])  # fmt: skip
    result = compare_with_reference(subject, _QEMU)
    assert [(d.kind.value, d.call) for d in result.failures] in (
        [("extra", "KVM_SET_TSS_ADDR")], [("extra", "KVM_CREATE_VM")]
    )  # fmt: skip
    assert "out of order" in result.failures[0].note


def test_rules_allow_with_reasons_and_require_calls(tmp_path: Path) -> None:
    rules_file = tmp_path / "x.allowances.yaml"
    rules_file.write_text(
        "allow:\n"
        "  - {kind: field, call: KVM_SET_USER_MEMORY_REGION, field: in.memory_size,"
        " reason: small guest}\n"
        "require:\n  - {call: KVM_SET_TSS_ADDR, reason: QEMU sets it on x86}\n"
    )
    rules = load_allowances(rules_file)
    subject = _document("vmm", main=[_OPEN, _CREATE_VM, _region(0, 0, 0x40000, "ram0+0x0")])
    result = compare_with_reference(subject, _QEMU, rules)
    assert [(d.kind.value, d.allowed) for d in result.deviations] == [
        ("field", True),
        ("missing", False),
    ]
    assert "KVM_SET_TSS_ADDR: never made; required: QEMU sets it on x86" in render_conformance(
        result, "x"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("allow: [{kind: extra}]", "every rule needs a `reason`"),
        ("allow: [{kind: odd, reason: r}]", "`kind` must be one of"),
        ("allow: [{kind: extra, field: in, reason: r}]", "`field` only applies"),
        ("deny: []", "expected a mapping"),
        ("allow: [{kind: extra, reason: r, when: x}]", "unknown key(s) when"),
        ("allow: [", "not YAML"),
    ],
)
def test_bad_rules_files_are_refused(tmp_path: Path, text: str, message: str) -> None:
    rules_file = tmp_path / "bad.allowances.yaml"
    rules_file.write_text(text)
    with pytest.raises(AllowancesError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_allowances(rules_file)


def test_the_articles_memory_observation_in_words() -> None:
    article_program = _document(
        "vmm",
        main=[
            _OPEN, _CREATE_VM,
            {"call": "mmap", "len": Hex(0x40000), "prot": ["PROT_READ", "PROT_WRITE"],
             "flags": ["MAP_PRIVATE", "MAP_ANONYMOUS"], "ret": "ram0"},
            _region(0, 0, 0x40000, "ram0+0x0"),
        ],
    )  # fmt: skip
    layout = compare_with_reference(article_program, _QEMU).layout
    assert layout == [
        "slot 0: QEMU registers 1 GiB at gpa 0x0; subject registers 256 KiB at gpa 0x0",
        "slot 0: QEMU reserves 1075838976 bytes PROT_NONE and maps 1 GiB MAP_FIXED inside it; "
        "subject maps 256 KiB directly (MAP_ANONYMOUS)",
    ]


def test_align_prefers_more_pairs_then_better_fields() -> None:
    reference = [TraceCall(_region(s, s << 20, 0x1000, "ram0+0x0")) for s in range(4)]
    subject = [TraceCall(_region(2, 2 << 20, 0x1000, "ram0+0x0"))]

    def disagreement(mine: TraceCall, theirs: TraceCall) -> int:
        return int(mine.entry != theirs.entry)

    assert align(subject, reference, disagreement).pairs == [(0, 2)]


def test_html_is_self_contained_and_escaped() -> None:
    hostile = _ioctl("KVM_SET_TSS_ADDR", arg="<script>alert(1)</script>")
    subject = _document("vmm", main=[_OPEN, _CREATE_VM, hostile])
    page = render_html(compare_with_reference(subject, _QEMU), "<b>name</b>")
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "&lt;b&gt;name&lt;/b&gt;" in page
    assert "<style>" in page and "src=" not in page and "href=" not in page
