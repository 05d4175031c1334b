"""The terminal report: what differs, where, with the calls around it; colour only on a TTY."""

from __future__ import annotations

import io

import pytest

from conformance.compare.regression import compare_documents
from conformance.report.diff import render_comparison, write_comparison
from conformance.snapshot.store import load_document

EXPECTED = """\
schema: kvm-conformance/1
source: {}
threads:
  main:
  - {call: open, path: /dev/kvm, flags: [O_RDWR, O_CLOEXEC], ret: kvm}
  - {call: ioctl, fd: kvm, req: KVM_GET_API_VERSION, out: {ret: 12}}
  - {call: ioctl, fd: kvm, req: KVM_CREATE_VM, arg: 0, ret: vm}
  - {call: mmap, len: 0x40000, prot: [PROT_READ, PROT_WRITE], flags: [MAP_PRIVATE], ret: ram0}
  - {call: ioctl, fd: vm, req: KVM_SET_USER_MEMORY_REGION, in: {slot: 0, guest_phys_addr: 0x0}}
  - {call: ioctl, fd: vm, req: KVM_CREATE_VCPU, arg: 0, ret: vcpu0}
  - {call: ioctl, fd: vcpu0, req: KVM_RUN, exit: {reason: KVM_EXIT_HLT}}
"""
CREATE_VCPU = "  - {call: ioctl, fd: vm, req: KVM_CREATE_VCPU"
CHANGED = EXPECTED.replace("guest_phys_addr: 0x0", "guest_phys_addr: 0x1000").replace(
    CREATE_VCPU, "  - {call: ioctl, fd: vm, req: KVM_CREATE_IRQCHIP}\n" + CREATE_VCPU
)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def comparison_text(color: bool = False) -> str:
    expected = load_document(EXPECTED, "expected/memory-setup.yaml")
    actual = load_document(CHANGED, "trace.yaml")
    return render_comparison(
        compare_documents(expected, actual, scenario="memory-setup"), color=color
    )


def test_each_difference_reads_as_one_line_followed_by_its_context() -> None:
    assert comparison_text() == (
        "memory-setup: 2 differences (expected expected/memory-setup.yaml)\n"
        "thread main, call #4 KVM_SET_USER_MEMORY_REGION: in.guest_phys_addr:"
        " expected 0x0, got 0x1000\n"
        "      #2    {call: ioctl, fd: kvm, req: KVM_CREATE_VM, arg: 0, ret: vm}\n"
        "      #3    {call: mmap, len: 0x40000, prot: [PROT_READ, PROT_WRITE],"
        " flags: [MAP_PRIVATE], ret: ram0}\n"
        "    - #4    {call: ioctl, fd: vm, req: KVM_SET_USER_MEMORY_REGION,"
        " in: {slot: 0, guest_phys_addr: 0x0}}\n"
        "    + #4    {call: ioctl, fd: vm, req: KVM_SET_USER_MEMORY_REGION,"
        " in: {slot: 0, guest_phys_addr: 0x1000}}\n"
        "      #5    {call: ioctl, fd: vm, req: KVM_CREATE_IRQCHIP}\n"
        "      #6    {call: ioctl, fd: vm, req: KVM_CREATE_VCPU, arg: 0, ret: vcpu0}\n"
        "thread main, call #5 KVM_CREATE_IRQCHIP: not expected\n"
        "      #3    {call: mmap, len: 0x40000, prot: [PROT_READ, PROT_WRITE],"
        " flags: [MAP_PRIVATE], ret: ram0}\n"
        "      #4    {call: ioctl, fd: vm, req: KVM_SET_USER_MEMORY_REGION,"
        " in: {slot: 0, guest_phys_addr: 0x1000}}\n"
        "    + #5    {call: ioctl, fd: vm, req: KVM_CREATE_IRQCHIP}\n"
        "      #6    {call: ioctl, fd: vm, req: KVM_CREATE_VCPU, arg: 0, ret: vcpu0}\n"
        "      #7    {call: ioctl, fd: vcpu0, req: KVM_RUN, exit: {reason: KVM_EXIT_HLT}}\n"
    )


def test_a_missing_call_shows_the_expected_call_where_it_should_be() -> None:
    expected = load_document(EXPECTED, "expected/memory-setup.yaml")
    actual = load_document(
        EXPECTED.replace("  - {call: ioctl, fd: kvm, req: KVM_GET_API", "  #"), "t"
    )
    text = render_comparison(compare_documents(expected, actual, scenario="memory-setup"))
    assert "thread main, call #1 KVM_GET_API_VERSION: missing\n" in text
    assert "    - #1    {call: ioctl, fd: kvm, req: KVM_GET_API_VERSION, out: {ret: 12}}\n" in text


def test_no_differences_says_so() -> None:
    document = load_document(EXPECTED, "expected/memory-setup.yaml")
    text = render_comparison(compare_documents(document, document, scenario="memory-setup"))
    assert text == "memory-setup: no differences (expected expected/memory-setup.yaml)\n"


def test_colour_on_a_terminal_plain_when_piped_or_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = load_document(EXPECTED, "expected/memory-setup.yaml")
    comparison = compare_documents(expected, load_document(CHANGED, "t"), scenario="memory-setup")
    monkeypatch.delenv("NO_COLOR", raising=False)
    terminal, pipe = Terminal(), io.StringIO()
    write_comparison(comparison, terminal)
    write_comparison(comparison, pipe)
    assert "\033[31m    - #4" in terminal.getvalue() and "\033[32m    + #4" in terminal.getvalue()
    assert "\033[" not in pipe.getvalue()
    assert terminal.getvalue() != pipe.getvalue()
    monkeypatch.setenv("NO_COLOR", "1")
    quiet = Terminal()
    write_comparison(comparison, quiet)
    assert quiet.getvalue() == pipe.getvalue() == comparison_text()
