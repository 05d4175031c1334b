"""The conformance check on small hand-written documents: order, fields, rules, layout, HTML."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conformance.compare.alignment import align
from conformance.compare.allowances import (
    Allowances,
    AllowancesError,
    allowances_beside,
    load_allowances,
)
from conformance.compare.conformance import compare_with_reference
from conformance.model.document import GUEST_MEMORY, Entry, Hex, TraceCall, TraceDocument, Value
from conformance.report.deviations import render_conformance
from conformance.report.html import conformance_page
from conformance.snapshot.store import read_document


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
        ("allow: [{kind: extra, reason: r, arg: 1}]", "`arg` must be non-empty text"),
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
        "slot 0: QEMU reserves 1026 MiB PROT_NONE and maps 1 GiB MAP_FIXED inside it; "
        "subject maps 256 KiB directly (MAP_ANONYMOUS)",
    ]


REFERENCES = Path(__file__).parents[2] / "traces" / "qemu"


def _tiny_bios() -> tuple[TraceDocument, Allowances]:
    path = REFERENCES / "tiny-bios.yaml"
    return read_document(path), load_allowances(allowances_beside(path))


def test_an_allowance_matches_only_the_call_its_reason_is_about() -> None:
    """tiny-bios allows KVM_CAP_READONLY_MEM asked on the VM fd; the same reason must not
    cover KVM_CAP_HLT (or KVM_CAP_NR_VCPUS) asked on /dev/kvm, which QEMU never asks."""
    reference, allowances = _tiny_bios()

    def check(capability: str, fd: str) -> Entry:
        return _ioctl("KVM_CHECK_EXTENSION", fd=fd, arg=capability, out={"ret": 1})

    subject = _document(
        "vmm",
        main=[
            _OPEN,
            _CREATE_VM,
            check("KVM_CAP_READONLY_MEM", "vm"),
            check("KVM_CAP_HLT", "kvm"),
            check("KVM_CAP_NR_VCPUS", "kvm"),
        ],
    )
    result = compare_with_reference(subject, reference, allowances)
    extras = {d.arg: d for d in result.deviations if d.kind.value == "extra"}
    readonly, hlt = extras["KVM_CAP_READONLY_MEM"], extras["KVM_CAP_HLT"]
    assert readonly.allowed_by is not None and "KVM_CAP_READONLY_MEM" in readonly.allowed_by.reason
    assert readonly.note == (
        "the reference makes KVM_CHECK_EXTENSION(KVM_CAP_READONLY_MEM) on kvm, never on vm"
    )
    assert hlt.allowed_by is None and extras["KVM_CAP_NR_VCPUS"].allowed_by is None
    assert hlt.note == "the reference never makes KVM_CHECK_EXTENSION(KVM_CAP_HLT)"
    report = render_conformance(result, "x")
    assert "QEMU never makes KVM_CHECK_EXTENSION(KVM_CAP_HLT)" in report
    assert report.count("allowed: QEMU asks KVM_CAP_READONLY_MEM") == 1


def test_a_call_qemu_makes_on_another_thread_is_never_said_to_be_unmade() -> None:
    """QEMU reads the vCPU's registers on its vCPU thread, once; a VMM reading them twice on
    its main thread is told where QEMU does it, not that QEMU never does."""
    reference, _ = _tiny_bios()
    [vcpu_thread] = [role for role in reference.threads if role.startswith("vcpu")]
    [get_regs] = [c for c in reference.calls(vcpu_thread) if c.call.name == "KVM_GET_REGS"]
    subject = _document("vmm", main=[_OPEN, _CREATE_VM, get_regs.entry, get_regs.entry])
    result = compare_with_reference(subject, reference)
    [extra] = [d for d in result.deviations if d.kind.value == "extra"]
    assert extra.note == (
        f"out of order: the reference makes KVM_GET_REGS on thread {vcpu_thread} "
        f"(#{get_regs.index}), but not at this point"
    )
    assert "never" not in render_conformance(result, "x")


def test_exits_of_another_guest_are_summarized_not_deviations() -> None:
    reference, allowances = _tiny_bios()
    run: Entry = {"call": "ioctl", "fd": "vcpu0", "req": "KVM_RUN",
                  "exit": {"reason": "KVM_EXIT_IO", "direction": "out", "size": 1,
                           "port": Hex(0x80), "count": 1}, "repeat": 343}  # fmt: skip
    subject = TraceDocument(
        {"tool": "vmm", GUEST_MEMORY: {"vm": {"pages": 2, "sha256": "ab" * 32}}},
        {"main": [TraceCall(_OPEN), TraceCall(_CREATE_VM)], "vcpu0": [TraceCall(run)]},
    )
    recorded = TraceDocument(
        {**reference.source, GUEST_MEMORY: {"vm": {"pages": 32, "sha256": "cd" * 32}}},
        reference.threads,
    )
    result = compare_with_reference(subject, recorded, allowances)
    assert [d for d in result.deviations if d.call == "KVM_RUN"] == []
    assert result.exits is not None and not result.exits.compared
    assert result.exits.subject == "343 KVM_RUN calls: KVM_EXIT_IO x343 (out 0x80 x343)"
    report = render_conformance(result, "x")
    assert "KVM_RUN exits not compared: the guests differ (memory sha256 abababababab" in report
    same = TraceDocument(
        {**subject.source, GUEST_MEMORY: recorded.source[GUEST_MEMORY]}, subject.threads
    )
    compared = compare_with_reference(same, recorded, allowances)
    assert compared.exits is not None and compared.exits.compared
    assert any(d.call == "KVM_RUN" for d in compared.deviations)  # port 0x80 is no exit of QEMU's


def test_align_prefers_more_pairs_then_better_fields() -> None:
    reference = [TraceCall(_region(s, s << 20, 0x1000, "ram0+0x0")) for s in range(4)]
    subject = [TraceCall(_region(2, 2 << 20, 0x1000, "ram0+0x0"))]

    def disagreement(mine: TraceCall, theirs: TraceCall) -> int:
        return int(mine.entry != theirs.entry)

    assert align(subject, reference, disagreement).pairs == [(0, 2)]


def test_html_is_self_contained_and_escaped() -> None:
    hostile = _ioctl("KVM_SET_TSS_ADDR", arg="<script>alert(1)</script>")
    subject = _document("vmm", main=[_OPEN, _CREATE_VM, hostile])
    page = conformance_page(compare_with_reference(subject, _QEMU), "<b>name</b>\x1b[31m")
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)" in page
    assert "&lt;b&gt;name&lt;/b&gt;\\x1b[31m" in page and "\x1b" not in page
    # Nothing is fetched: no src= at all, links only to places on the page itself.
    assert "<style>" in page and "src=" not in page and "<link" not in page
    assert re.findall(r'href="([^"#][^"]*)"', page) == []
    assert page.count("<script>") == 1  # the page's own filter script, and no other
