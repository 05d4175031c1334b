"""strace logs -> trace documents: line forms, split calls, fd annotations, bad input."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conformance.cli.record_trace import main as record_trace
from conformance.normalize.strace_import import StraceImportError, import_strace_log
from conformance.normalize.strace_syntax import StraceSyntaxError, parse_log

FIXTURE = Path(__file__).parent.parent / "fixtures" / "strace" / "article.strace"


def test_the_article_log_normalizes_like_a_traced_run() -> None:
    document = import_strace_log(FIXTURE).document
    main = [call.entry for call in document.threads["main"]]
    assert main[3]["len"] == 1075838976 and main[3]["prot"] == ["PROT_NONE"]
    assert main[4]["addr"] == "region0+0x0" and main[4]["ret"] == "ram0"
    assert main[5]["in"] == {
        "slot": 0, "flags": [], "guest_phys_addr": 0, "memory_size": 1 << 30,
        "userspace_addr": "ram0+0x0",
    }  # fmt: skip
    vcpu = [call.entry for call in document.threads["vcpu0"]]
    assert vcpu[0] == {
        "call": "ioctl", "fd": "vm", "req": "KVM_CREATE_VCPU", "arg": 0, "ret": "vcpu0"
    }  # fmt: skip
    assert vcpu[2]["fd"] == "vcpu0" and vcpu[2]["ret"] == "kvm_run:vcpu0"
    assert vcpu[4]["undecoded"] == "pointer"  # SET_SREGS2: strace prints a pointer
    assert vcpu[-1]["errno"] == "EINTR"


@pytest.mark.parametrize(
    "prefix", ["", "1234 ", "[pid  1234] "], ids=["no -f", "-f bare", "-f bracketed"]
)
def test_prefixes_and_split_calls(tmp_path: Path, prefix: str) -> None:
    log = tmp_path / "vmm.strace"
    log.write_text(
        f'{prefix}openat(AT_FDCWD, "/dev/kvm", O_RDWR|O_CLOEXEC) = 3\n'
        f"{prefix}ioctl(3, KVM_CREATE_VM, 0 <unfinished ...>\n"
        f"{prefix}<... ioctl resumed>) = 4\n"
    )
    calls = import_strace_log(log).document.threads["main"]
    assert [call.name for call in calls] == ["open", "KVM_CREATE_VM"]


def test_a_malformed_line_is_named_or_counted_when_lenient(tmp_path: Path) -> None:
    log = tmp_path / "bad.strace"
    log.write_text(
        'openat(AT_FDCWD, "/dev/kvm", O_RDWR) = 3\n'
        "this is not strace\n"
        "ioctl(3, KVM_CREATE_VM, 0) = 4\n"
    )
    with pytest.raises(StraceSyntaxError, match=r"bad\.strace:2: "):
        import_strace_log(log)
    imported = import_strace_log(log, lenient=True)
    assert imported.skipped_lines == 1
    assert [c.name for c in imported.document.threads["main"]] == ["open", "KVM_CREATE_VM"]


def test_a_resumed_call_without_its_start_is_malformed() -> None:
    with pytest.raises(StraceSyntaxError, match=":1: `ioctl resumed` without its start"):
        parse_log(Path("x"), "<... ioctl resumed>) = 0\n")


def test_a_struct_strace_abbreviated_is_marked(tmp_path: Path) -> None:
    log = tmp_path / "short.strace"
    log.write_text(
        'openat(AT_FDCWD, "/dev/kvm", O_RDWR) = 3\n'
        "ioctl(3, KVM_GET_SUPPORTED_CPUID, {nent=75, entries=[...]}) = 0\n"
    )
    entry = import_strace_log(log).document.threads["main"][1].entry
    assert entry["undecoded"] == "elided"


def test_a_log_without_kvm_is_refused(tmp_path: Path) -> None:
    log = tmp_path / "ls.strace"
    log.write_text('openat(AT_FDCWD, "/etc/passwd", O_RDONLY) = 3\n')
    with pytest.raises(StraceImportError, match="no KVM call"):
        import_strace_log(log)


def test_record_trace_strace_log_exit_statuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.yaml"
    assert record_trace(["strace-log", str(FIXTURE), "-o", str(out)]) == 0
    assert record_trace(["strace-log", str(FIXTURE), "-o", str(out)]) == 2
    assert "exists; give --force" in capsys.readouterr().err
    assert record_trace(["strace-log", str(tmp_path / "missing.strace")]) == 2
    assert "cannot read" in capsys.readouterr().err


_LONG = 100_000  # characters: a parser quadratic in a line's length would not finish


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("openat() = 3", "openat with 0 argument(s), where strace writes 3"),
        ("ioctl(3) = 0", "ioctl with 1 argument(s), where strace writes 2"),
        ("mmap(NULL, 4096) = 0x7f0000000000", "mmap with 2 argument(s), where strace writes 6"),
        ("munmap(0x1000) = 0", "munmap with 1 argument(s)"),
        ("ioctl(3, KVM_SET_REGS, " + "{a=" * 5000 + "1" + "}" * 5000 + ") = 0", "nested deeper"),
        ("ioctl(3, KVM_SET_REGS, " + "[" * 5000 + "]" * 5000 + ") = 0", "nested deeper"),
        ("[pid " + "7" * 4301 + "] ioctl(3, KVM_RUN, 0) = 0", "not a system call"),
        ("ioctl(3, KVM_RUN, 0) = " + "7" * 4301, "not a system call"),
        ("ioctl(3, KVM_RUN" + " " * _LONG + "x) = 0", "expected ','"),
        ("ioctl(3)" + " " * _LONG + "x", "not a system call"),
        ("ioctl(3, " + "/* " * _LONG + ") = 0", "expected ','"),
    ],
    ids=[
        "openat-without-arguments",
        "ioctl-without-request",
        "mmap-with-two",
        "munmap-with-one",
        "deep-structs",
        "deep-lists",
        "4301-digit-pid",
        "4301-digit-return",
        "spaces-before-a-token",
        "spaces-after-the-call",
        "unclosed-comments",
    ],
)
def test_malformed_lines_are_errors_naming_their_line(
    tmp_path: Path, line: str, words: str
) -> None:
    log = tmp_path / "vmm.strace"
    opening = 'openat(AT_FDCWD, "/dev/kvm", O_RDWR|O_CLOEXEC) = 3\n'
    log.write_text(opening + line + "\n")
    with pytest.raises((StraceSyntaxError, StraceImportError)) as raised:
        import_strace_log(log)
    assert str(raised.value).startswith(f"{log}:2: ")
    assert words in str(raised.value)


def test_an_mmap_over_the_mapping_its_address_names_is_named_too(tmp_path: Path) -> None:
    """MAP_FIXED over a smaller mapping at the same address (here of an absurd length) replaces
    it; the hint still names it, so it is named, not a normalizer error."""
    log = tmp_path / "vmm.strace"
    log.write_text(
        'openat(AT_FDCWD, "/dev/kvm", O_RDWR|O_CLOEXEC) = 3\n'
        "ioctl(3, KVM_CREATE_VM, 0) = 4\n"
        "mmap(NULL, 4096, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = "
        "0x7f0000000000\n"
        "mmap(0x7f0000000000, 18446744073709547520, PROT_READ|PROT_WRITE, "
        "MAP_PRIVATE|MAP_ANONYMOUS|MAP_FIXED, -1, 0) = 0x7f0000000000\n"
        "ioctl(4, KVM_SET_USER_MEMORY_REGION, {slot=0, flags=0, guest_phys_addr=0, "
        "memory_size=4096, userspace_addr=0x7f0000000000}) = 0\n"
    )
    main = [call.entry for call in import_strace_log(log).document.threads["main"]]
    assert main[2]["ret"] == "region0"
    assert main[3]["addr"] == "region0+0x0" and main[3]["ret"] == "ram0"
    assert main[3]["len"] == 0xFFFFFFFFFFFFF000


@pytest.mark.parametrize("kind", ["fifo", "directory", "not-utf8"])
def test_logs_that_are_not_regular_text_files(tmp_path: Path, kind: str) -> None:
    log = tmp_path / "vmm.strace"
    if kind == "fifo":
        os.mkfifo(log)
    elif kind == "directory":
        log.mkdir()
    else:
        log.write_bytes(b'openat(AT_FDCWD, "/dev/kvm\xff", O_RDWR) = 3\n')
    if kind == "not-utf8":  # strace escapes what is not printable: a bad byte is shown as U+FFFD
        [opened] = import_strace_log(log).document.threads["main"]
        assert opened.entry["path"] == "/dev/kvm\ufffd"
        return
    with pytest.raises(StraceImportError, match="not a regular file"):
        import_strace_log(log)


@pytest.mark.parametrize(
    "line",
    [
        "ioctl(3" + " " * _LONG + "x <unfinished ...>",
        "ioctl(" + "9<" * _LONG + ") = 0",
        "ioctl(" + "1" * _LONG + "x) = 0",
        "ioctl(" + "1" * _LONG + ") = 0",
    ],
    ids=["spaces-before-unfinished", "fd-paths", "digits-then-letters", "a 100k-digit fd"],
)
def test_long_lines_that_are_no_kvm_call_are_passed_over_quickly(tmp_path: Path, line: str) -> None:
    log = tmp_path / "vmm.strace"
    log.write_text('openat(AT_FDCWD, "/dev/kvm", O_RDWR|O_CLOEXEC) = 3\n' + line + "\n")
    assert import_strace_log(log).document.call_count() == 1


def test_1500_remaps_inside_one_reservation(tmp_path: Path) -> None:
    """A VMM remapping its guest memory over and over (balloon, hotplug): this crashed the
    normalizer with RecursionError at 1,500."""
    remap = (
        "mmap(0x7f0000000000, 1073741824, PROT_READ|PROT_WRITE, "
        "MAP_PRIVATE|MAP_ANONYMOUS|MAP_FIXED, -1, 0) = 0x7f0000000000\n"
    )
    log = tmp_path / "vmm.strace"
    log.write_text(
        'openat(AT_FDCWD, "/dev/kvm", O_RDWR|O_CLOEXEC) = 3\n'
        "ioctl(3, KVM_CREATE_VM, 0) = 4\n"
        "mmap(NULL, 1075838976, PROT_NONE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = 0x7f0000000000\n"
        + remap
        * 1500
        + "ioctl(4, KVM_SET_USER_MEMORY_REGION, {slot=0, flags=0, guest_phys_addr=0, "
        "memory_size=1073741824, userspace_addr=0x7f0000000000}) = 0\n"
    )
    main = [call.entry for call in import_strace_log(log).document.threads["main"]]
    assert [entry.get("ret") for entry in main if entry["call"] == "mmap"] == ["region0", "ram0"]
    assert main[-1]["in"] == {
        "slot": 0, "flags": [], "guest_phys_addr": 0, "memory_size": 1 << 30,
        "userspace_addr": "ram0+0x0",
    }  # fmt: skip
