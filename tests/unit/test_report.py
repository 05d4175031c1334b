"""The terminal diff: one line per cause, short context calls, changed fields marked, moves,
groups, a line saying how to accept; colour only on a TTY; the single-field goal."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest

from conformance.compare.regression import compare_documents
from conformance.report.diff import render_comparison, write_comparison
from conformance.report.host import host_block
from conformance.snapshot.store import load_document, read_document

REPO = Path(__file__).resolve().parents[2]
EXPECTED = """\
schema: kvm-conformance/2
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


def _diff(expected: str, actual: str, **options: object) -> str:
    comparison = compare_documents(
        load_document(expected, "expected/memory-setup.yaml"),
        load_document(actual, "trace.yaml"),
        scenario="memory-setup",
    )
    return render_comparison(comparison, **options)  # type: ignore[arg-type]


def test_each_cause_is_a_line_then_short_calls_around_it_with_the_field_marked() -> None:
    assert _diff(EXPECTED, CHANGED, accept="kvm-conformance check --update") == (
        "memory-setup: 2 differences from expected/memory-setup.yaml\n"
        "thread main, call #4 KVM_SET_USER_MEMORY_REGION: in.guest_phys_addr:"
        " expected 0x0, got 0x1000\n"
        "thread main, call #5 KVM_CREATE_IRQCHIP: not expected\n"
        "      #2   KVM_CREATE_VM(kvm, 0) -> vm\n"
        "      #3   mmap(len: 0x40000, prot: [PROT_READ, PROT_WRITE]) -> ram0\n"
        "    - #4   KVM_SET_USER_MEMORY_REGION(vm, slot: 0)  in.guest_phys_addr: [-0x0-]\n"
        "    + #4   KVM_SET_USER_MEMORY_REGION(vm, slot: 0)  in.guest_phys_addr: {+0x1000+}\n"
        "    + #5   KVM_CREATE_IRQCHIP(vm)\n"
        "      #6   KVM_CREATE_VCPU(vm, 0) -> vcpu0\n"
        "      #7   KVM_RUN(vcpu0) -> KVM_EXIT_HLT\n"
        "to accept: kvm-conformance check --update\n"
    )


def test_a_missing_call_shows_the_expected_call_where_it_should_be() -> None:
    text = _diff(EXPECTED, EXPECTED.replace("  - {call: ioctl, fd: kvm, req: KVM_GET_API", "  #"))
    assert text.splitlines()[1:] == [
        "thread main, call #1 KVM_GET_API_VERSION: missing",
        "      #0   open(/dev/kvm) -> kvm",
        "    - #1   KVM_GET_API_VERSION(kvm)",
        "      #1   KVM_CREATE_VM(kvm, 0) -> vm",
        "      #2   mmap(len: 0x40000, prot: [PROT_READ, PROT_WRITE]) -> ram0",
    ]


def test_two_swapped_calls_are_one_move() -> None:
    lines = EXPECTED.splitlines(keepends=True)
    lines[7], lines[8] = lines[8], lines[7]  # the mmap after the memory region
    text = _diff(EXPECTED, "".join(lines))
    assert text.startswith("memory-setup: 1 difference from expected/memory-setup.yaml\n")
    assert (
        "thread main, call #3 KVM_SET_USER_MEMORY_REGION: moved: expected as #4, after mmap\n"
        in (text)
        or "thread main, call #4 mmap: moved: expected as #3, after KVM_CREATE_VM\n" in text
    )
    assert "not expected" not in text and "missing" not in text
    assert "    > #" in text


# A snapshot with its CPUID written out entry by entry (schema 1, upgraded when read): one
# whose entries a test can change by hand. Ours write the table as `entries: host`.
LITERAL_CPUID_HELLO = REPO / "tests" / "fixtures" / "hosts" / "amd-epyc" / "expected" / "hello.yaml"


def test_the_same_field_of_many_table_entries_is_one_line_with_their_keys() -> None:
    hello = LITERAL_CPUID_HELLO.read_text()
    start = hello.index("req: KVM_SET_CPUID2")
    changed = hello[:start] + hello[start:].replace(
        "flags: 0x0, eax: 0x0,", "flags: 0x0, eax: 0x7,"
    )
    text = _diff(hello, changed)
    [grouped] = [line for line in text.splitlines() if "in.entries[*].eax" in line]
    assert grouped.startswith("thread main, call #14 KVM_SET_CPUID2: in.entries[*].eax in ")
    assert "entries ([0x2/0x0], [0x3/0x0], [0x5/0x0], … " in grouped
    assert grouped.endswith(": expected 0x0, got 0x7")
    assert len(text.splitlines()) <= 15


def test_identical_differences_of_many_calls_are_one_line() -> None:
    run = "  - {call: ioctl, fd: vcpu0, req: KVM_RUN, "
    runs = "".join(
        f"{run}exit: {{reason: KVM_EXIT_IO, port: 0x{port:x}}}}}\n"
        f"{run}in: {{io: {{data: [0x1]}}}}, exit: {{reason: KVM_EXIT_HLT}}}}\n"
        for port in range(0x70, 0x76)
    )
    expected = "schema: kvm-conformance/2\nsource: {}\nthreads:\n  vcpu0:\n" + runs
    actual = expected.replace("data: [0x1]", "data: [0x2]")
    text = _diff(expected, actual)
    assert text.splitlines()[1] == (
        "thread vcpu0, 6 calls KVM_RUN (#1, #3, #5, … #11): in.io.data: expected [0x1], got [0x2]"
    )
    assert len(text.splitlines()) <= 15


def test_no_line_is_over_200_characters_unless_full() -> None:
    long_path = "x" * 300
    expected = EXPECTED.replace("path: /dev/kvm", f"path: /dev/kvm{long_path}")
    actual = EXPECTED.replace("path: /dev/kvm", f"path: /dev/kvm{long_path}y")
    short = _diff(expected, actual)
    assert max(len(line) for line in short.splitlines()) <= 200
    full = _diff(expected, actual, full=True)
    assert max(len(line) for line in full.splitlines()) > 300
    assert f"path: /dev/kvm{long_path}y" in full  # the call whole


def test_no_differences_says_so_and_offers_nothing_to_accept() -> None:
    text = _diff(EXPECTED, EXPECTED, accept="kvm-conformance check --update")
    assert text == "memory-setup: no differences from expected/memory-setup.yaml\n"


def test_colour_on_a_terminal_plain_when_piped_or_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = load_document(EXPECTED, "expected/memory-setup.yaml")
    comparison = compare_documents(expected, load_document(CHANGED, "t"), scenario="memory-setup")
    monkeypatch.delenv("NO_COLOR", raising=False)
    terminal, pipe = Terminal(), io.StringIO()
    write_comparison(comparison, terminal)
    write_comparison(comparison, pipe)
    assert "\033[31m    - #4" in terminal.getvalue() and "\033[32m    + #4" in terminal.getvalue()
    assert "\033[7m0x1000\033[0m" in terminal.getvalue()  # the changed value reversed
    assert "\033[" not in pipe.getvalue() and "{+0x1000+}" in pipe.getvalue()
    monkeypatch.setenv("NO_COLOR", "1")
    quiet = Terminal()
    write_comparison(comparison, quiet)
    assert quiet.getvalue() == pipe.getvalue()


def _edit_snapshot(name: str, edit: Callable[[str], str]) -> tuple[str, str]:
    path = REPO / "expected" / f"{name}.yaml"
    text = (LITERAL_CPUID_HELLO if edit is _extra_leaf else path).read_text()
    return edit(text), text


def _swap(first: str, second: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        lines = text.splitlines(keepends=True)
        a = next(i for i, line in enumerate(lines) if first in line)
        b = next(i for i, line in enumerate(lines) if second in line)
        lines[a], lines[b] = lines[b], lines[a]
        return "".join(lines)

    return edit


def _extra_leaf(text: str) -> str:
    start = text.index("req: KVM_SET_CPUID2")
    at = text.index("      - {function: 0x40000001,", start)
    end = text.index("\n", at) + 1
    added = text[at:end].replace("function: 0x40000001", "function: 0x40000010")
    text = text[:end] + added + text[end:]
    nent = text.index("nent: 75", start)
    return text[:nent] + "nent: 76" + text[nent + len("nent: 75") :]


# Issue 16's kinds of single change, each made to the snapshot (what was expected) while the
# committed trace is what the VMM now does.
SINGLE_CHANGES: dict[str, tuple[str, Callable[[str], str]]] = {
    "register": (
        "hello",
        lambda t: t.replace("rip: 0x1000, rflags: 0x2}", "rip: 0x1000, rflags: 0x202}"),
    ),
    "slot size": (
        "memory-setup",
        lambda t: t.replace("memory_size: 0x40000,", "memory_size: 0x80000,"),
    ),
    "reorder": ("hello", _swap("req: KVM_SET_IDENTITY_MAP_ADDR", "req: KVM_SET_TSS_ADDR")),
    "missing CPUID leaf": ("hello", _extra_leaf),
    "extra call": (
        "hello",
        lambda t: t.replace(
            "  - {call: ioctl, fd: kvm, req: KVM_CHECK_EXTENSION, arg: KVM_CAP_EXT_CPUID,"
            " out: {ret: 1}}\n",
            "",
        ),
    ),
    "missing call": (
        "memory-setup",
        lambda t: t.replace(
            "  - {call: ioctl, fd: vm, req: KVM_SET_USER_MEMORY_REGION",
            "  - {call: ioctl, fd: vm, req: KVM_CREATE_IRQCHIP}\n"
            "  - {call: ioctl, fd: vm, req: KVM_SET_USER_MEMORY_REGION",
        ),
    ),
}  # fmt: skip


@pytest.mark.parametrize("change", sorted(SINGLE_CHANGES))
def test_a_single_change_prints_at_most_15_lines_and_2000_characters(change: str) -> None:
    name, edit = SINGLE_CHANGES[change]
    expected, actual = _edit_snapshot(name, edit)
    assert expected != actual
    text = _diff(expected, actual, accept=f"kvm-conformance check --update --scenario {name}")
    lines = text.splitlines()
    assert len(lines) <= 15 and len(text) <= 2000, text
    assert max(len(line) for line in lines) <= 200
    assert lines[-1] == f"to accept: kvm-conformance check --update --scenario {name}"
    assert sum(line.startswith("thread main") for line in lines) == (
        2 if change == "missing CPUID leaf" else 1  # the leaf, and the entry count with it
    )


def test_another_hosts_snapshot_compares_equal_and_names_the_hosts_once() -> None:
    """What `check` compares on AMD against a snapshot recorded on Intel: the VMM's decisions
    are the same, and the host block names what the hosts answered differently."""
    intel = read_document(REPO / "tests" / "fixtures" / "report" / "hello.intel-xeon.yaml")
    amd = read_document(REPO / "expected" / "hello.yaml")
    comparison = compare_documents(intel, amd, scenario="hello")
    block = host_block(comparison.hosts)
    assert comparison.ok, render_comparison(comparison)
    lines = block.splitlines()
    assert lines[0].startswith("host: recorded on Intel(R) Xeon(R) Processor (59 CPUID entries), ")
    assert "CPU vendor: GenuineIntel → AuthenticAMD" in block
    assert len(lines) <= 8 and max(len(line) for line in lines) <= 200, block


def test_reading_a_diff_shows_the_real_output() -> None:
    """docs/reading-a-diff.md's first diff is what the diff of that change prints."""
    doc = (REPO / "docs" / "reading-a-diff.md").read_text()
    shown = doc.split("A changed register:\n\n```text\n", 1)[1].split("```", 1)[0]
    hello = (REPO / "expected" / "hello.yaml").read_text()
    expected = hello.replace("rip: 0x1000, rflags: 0x2}", "rip: 0x1000, rflags: 0x202}")
    comparison = compare_documents(
        load_document(expected, "expected/hello.yaml"),
        load_document(hello, "trace"),
        scenario="hello",
    )
    printed = render_comparison(
        comparison, accept="kvm-conformance check --update --scenario hello"
    )
    assert printed == shown
