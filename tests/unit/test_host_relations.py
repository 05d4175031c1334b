"""Host portability as rules on documents: negotiation collapsed, the host profile, host symbols,
and what the comparison lets two hosts' traces differ in (and what not)."""

from __future__ import annotations

from typing import Any

from conformance.compare.regression import compare_documents
from conformance.model.document import Entry, TraceCall, TraceDocument
from conformance.model.host_profile import HostProfile
from conformance.model.host_symbols import resolve_call
from conformance.model.negotiation import collapse_negotiation
from conformance.model.portable import make_portable
from conformance.report.diff import render_comparison
from conformance.report.host import host_block
from conformance.snapshot.format import dump_document, load_document


def _calls(*entries: Entry) -> list[TraceCall]:
    return [TraceCall(dict(entry)) for entry in entries]


def _probe(count: int, *, errno: str | None = "E2BIG", answered: int | None = None) -> Entry:
    entry: Entry = {"call": "ioctl", "fd": "kvm", "req": "KVM_GET_SUPPORTED_CPUID"}
    entry["in"] = {"nent": count}
    if errno is not None:
        entry["errno"] = errno
    entry["out"] = {"nent": count if answered is None else answered}
    return entry


def test_a_probe_and_its_retries_are_one_call_with_the_first_guess_and_the_last_outcome() -> None:
    calls = _calls(_probe(1), _probe(2), _probe(4, errno=None, answered=3))
    [call] = collapse_negotiation(calls)
    assert call.entry == {
        "call": "ioctl",
        "fd": "kvm",
        "req": "KVM_GET_SUPPORTED_CPUID",
        "in": {"nent": 1},
        "out": {"nent": 3},
        "tries": 3,
    }


def test_a_full_buffer_then_a_larger_one_is_a_retry_too() -> None:
    full = _probe(8, errno=None) | {"req": "KVM_GET_SUPPORTED_HV_CPUID", "fd": "vcpu0"}
    larger = _probe(16, errno=None, answered=10) | {"req": "KVM_GET_SUPPORTED_HV_CPUID"}
    larger["fd"] = "vcpu0"
    [call] = collapse_negotiation(_calls(full, larger))
    assert call.entry["in"] == {"nent": 8} and call.entry["out"] == {"nent": 10}
    assert call.entry["tries"] == 2


def test_calls_that_are_not_a_negotiation_stay_apart() -> None:
    answered = _probe(64, errno=None, answered=61)
    other_fd = _probe(128, errno=None) | {"fd": "vm"}
    smaller = _probe(32, errno=None)
    not_negotiated = _probe(64) | {"req": "KVM_SET_CPUID2"}
    for calls in (
        [answered, _probe(128, errno=None)],  # the first one was answered whole
        [_probe(64), other_fd],
        [_probe(64), smaller],
        [not_negotiated, not_negotiated | {"in": {"nent": 128}}],
    ):
        assert len(collapse_negotiation(_calls(*calls))) == 2


SCHEMA_1 = """\
schema: kvm-conformance/1
source:
  host: {cpu: Test CPU, kernel: '6.1'}
threads:
  main:
  - {call: ioctl, fd: kvm, req: KVM_GET_SUPPORTED_CPUID, in: {nent: 1}, errno: E2BIG}
  - call: ioctl
    fd: kvm
    req: KVM_GET_SUPPORTED_CPUID
    in: {nent: 2}
    out:
      nent: 2
      entries:
      - {function: 0x0, index: 0x0, eax: 0xd, ebx: 0x756e6547, ecx: 0x6c65746e, edx: 0x49656e69}
      - {function: 0x1, index: 0x0, eax: 0x806c1, ebx: 0x3000800, ecx: 0x2000, edx: 0x0}
  - {call: ioctl, fd: vcpu0, req: KVM_GET_TSC_KHZ, out: {ret: 2000000}}
  - {call: ioctl, fd: vcpu0, req: KVM_SET_TSC_KHZ, arg: 2000000}
  - call: ioctl
    fd: vcpu0
    req: KVM_SET_CPUID2
    in:
      nent: 2
      entries:
      - {function: 0x0, index: 0x0, eax: 0xd, ebx: 0x756e6547, ecx: 0x6c65746e, edx: 0x49656e69}
      - {function: 0x1, index: 0x0, eax: 0x806c1, ebx: 0x800, ecx: 0x2000, edx: 0x0}
  - {call: ioctl, fd: vcpu0, req: KVM_SET_REGS, in: {rdx: 0x806c1, rip: 0xfff0}}
"""


def test_a_schema_1_document_is_read_as_schema_2_would_have_written_it() -> None:
    document = load_document(SCHEMA_1, "old.yaml")
    calls: list[Any] = [call.entry for call in document.threads["main"]]
    assert calls[0]["tries"] == 2 and calls[0]["in"] == {"nent": 1}
    assert calls[2]["arg"] == "host.tsc_khz"
    # Leaf 1 EBX differs in the APIC ID only (the answering CPU's 3, the vCPU's 0): the table.
    assert calls[3]["in"] == {"nent": "host", "entries": "host"}
    assert calls[4]["in"] == {"rdx": "host.cpuid.0x1.eax", "rip": 0xFFF0}
    profile = HostProfile.of(document)
    assert (profile.get("vendor"), profile.get("family"), profile.get("model")) == (
        "GenuineIntel",
        6,
        0x8C,
    )
    assert profile.get("tsc_khz") == 2000000 and profile.cpuid_entries() == 2
    assert profile.cpuid[(0x1, 0)]["ebx"] == 0x800  # the answering CPU's APIC ID cleared
    text = dump_document(document)
    assert text.startswith("schema: kvm-conformance/2\n")
    assert dump_document(load_document(text, "new.yaml")) == text


def test_symbols_resolve_back_to_this_hosts_values() -> None:
    document = load_document(SCHEMA_1, "old.yaml")
    profile = HostProfile.of(document)
    cpuid, regs = document.threads["main"][3].entry, document.threads["main"][4].entry
    resolved: Any = resolve_call(cpuid, profile)["in"]
    assert resolved["nent"] == 2 and resolved["entries"][1]["eax"] == 0x806C1
    assert resolve_call(regs, profile)["in"] == {"rdx": 0x806C1, "rip": 0xFFF0}


def test_an_input_that_differs_from_the_host_answer_stays_literal() -> None:
    text = SCHEMA_1.replace("arg: 2000000}", "arg: 1000000}").replace("rdx: 0x806c1", "rdx: 0x6")
    text = text.replace("ebx: 0x800, ecx: 0x2000", "ebx: 0x800, ecx: 0x0")
    calls: list[Any] = [call.entry for call in load_document(text, "old.yaml").threads["main"]]
    assert calls[2]["arg"] == 1000000
    assert calls[4]["in"] == {"rdx": 0x6, "rip": 0xFFF0}
    assert calls[3]["in"]["entries"][1] == {
        "function": 0x1,
        "index": 0x0,
        "eax": "host",
        "ebx": "host",
        "ecx": 0x0,
        "edx": "host",
    }


def _document(answer: int, *, probed_call: bool) -> TraceDocument:
    main: list[Entry] = [
        {"call": "ioctl", "fd": "kvm", "req": "KVM_CHECK_EXTENSION", "arg": "KVM_CAP_X86_SMM"},
        {"call": "ioctl", "fd": "vm", "req": "KVM_CREATE_VCPU", "arg": 0, "ret": "vcpu0"},
    ]
    if answer:
        main[0]["out"] = {"ret": answer}
    if probed_call:
        main.insert(1, {"call": "ioctl", "fd": "vm", "req": "KVM_ENABLE_CAP", "in": {"cap": 0}})
    document = TraceDocument(source={}, threads={"main": _calls(*main)})
    return make_portable(document)


def test_a_call_made_after_a_probe_the_hosts_answered_otherwise_is_explained_by_the_host() -> None:
    expected = _document(1, probed_call=True)
    actual = _document(0, probed_call=False)
    comparison = compare_documents(expected, actual, scenario="smm")
    assert comparison.ok and len(comparison.differences) == 1
    [difference] = comparison.differences
    assert difference.explained_by == "KVM_CHECK_EXTENSION(KVM_CAP_X86_SMM): 1 → 0"
    assert "explained by the host: thread main, call #1 KVM_ENABLE_CAP" in render_comparison(
        comparison
    )
    assert "  KVM_CAP_X86_SMM: 1 → 0\n" in host_block(comparison.hosts)


def test_the_same_path_difference_on_one_host_is_a_regression() -> None:
    comparison = compare_documents(
        _document(1, probed_call=True), _document(1, probed_call=False), scenario="smm"
    )
    assert not comparison.ok
    assert [d.explained_by for d in comparison.differences] == [""]
    assert host_block(comparison.hosts) == ""
