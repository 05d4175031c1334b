"""strace logs -> trace documents: line forms, split calls, fd annotations, bad input."""

from __future__ import annotations

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
