"""Issue 19's crafted documents through the command line: exit 2 with file:line, no traceback,
no raw control character on the terminal; never exit 1 (to CI that means "your VMM deviates").
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from conformance.cli.main import main as cli_main
from conformance.snapshot.store import SnapshotError, SnapshotStore

ROOT = Path(__file__).resolve().parents[2]
BASE = (ROOT / "expected" / "hello.yaml").read_text(encoding="utf-8")
REFERENCE = ROOT / "conformance" / "qemu" / "references" / "tiny-bios.yaml"
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _changed(old: str, new: str) -> str:
    assert old in BASE
    return BASE.replace(old, new, 1)


CRAFTED = {
    "plus-sign": (_changed("arg: 0, ret: vcpu0", "arg: +5, ret: vcpu0"), "malformed integer '+5'"),
    "underscores": (
        _changed("memory_size: 0x40000,", "memory_size: 1_000,"),
        "malformed integer '1_000'",
    ),
    "5000-digits": (
        _changed("memory_size: 0x40000,", "memory_size: " + "9" * 5000 + ","),
        "malformed integer '99999",
    ),
    "sexagesimal": (
        _changed("memory_size: 0x40000,", "memory_size: 1:30,"),
        "malformed integer '1:30'",
    ),
    "long-octal": (
        _changed("memory_size: 0x40000,", "memory_size: 0777777777777777777777777,"),
        "malformed integer '0777777777777777777777777'",
    ),
    "past-64-bits": (
        _changed("memory_size: 0x40000,", "memory_size: 0x10000000000000000,"),
        "does not fit in 64 bits",
    ),
    "mapping-as-request": (
        _changed("req: KVM_CREATE_VM,", "req: {a: 1},"),
        "main[2] req: expected a name or an integer, found {'a': 1}",
    ),
    "errno-as-list": (
        _changed("arg: 0, ret: vm}", "arg: 0, errno: [E2BIG]}"),
        "errno: expected a name or an integer, found ['E2BIG']",
    ),
    "tag-on-a-sequence": (
        _changed("flags: [O_RDWR, O_CLOEXEC]", "flags: !!python/object/apply:os.system [id]"),
        "YAML tags (tag:yaml.org,2002:python/object/apply:os.system) are not allowed",
    ),
    "escapes-in-a-role": (
        _changed("  main:", '  "ma\\e[2J\\e]0;title\\ain":'),
        "thread role 'ma\\x1b[2J\\x1b]0;title\\x07in'",
    ),
    "escapes-in-a-request": (
        _changed("req: KVM_CREATE_VM,", 'req: "KVM_\\e[2J",'),
        "main[2] req: expected a name or an integer, found 'KVM_\\x1b[2J'",
    ),
    "a-float": (_changed("arg: 0, ret: vcpu0", "arg: 1.5, ret: vcpu0"), "unsupported value"),
    "unknown-call": (_changed("{call: open,", "{call: execve,"), "unknown call 'execve'"),
}


@pytest.mark.parametrize("command", ["diff", "lint"])
@pytest.mark.parametrize("kind", sorted(CRAFTED))
def test_crafted_documents_are_usage_errors_naming_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, kind: str
) -> None:
    text, words = CRAFTED[kind]
    path = tmp_path / f"{kind}.yaml"
    path.write_text(text, encoding="utf-8")
    arguments = [command, str(path), *([str(REFERENCE)] if command == "diff" else [])]
    assert cli_main(arguments) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert re.match(rf"kvm-conformance: {re.escape(str(path))}:\d+: ", err), err
    assert words in err
    assert "Traceback" not in err and not _CONTROL.search(err.replace("\n", ""))


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory"])
def test_inputs_that_are_not_regular_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    path = {"fifo": tmp_path / "trace.yaml", "dev-zero": Path("/dev/zero"), "directory": tmp_path}[
        kind
    ]
    if kind == "fifo":
        os.mkfifo(path)
    assert cli_main(["lint", str(path)]) == 2
    assert cli_main(["diff", str(path), str(REFERENCE)]) == 2
    assert cli_main(["diff", str(REFERENCE), str(REFERENCE), "--allowances", str(path)]) == 2
    assert cli_main(["lint", "--config", str(path), str(REFERENCE)]) == 2
    err = capsys.readouterr().err
    assert err.count("not a regular file") == 4, err


def test_not_utf8_allowances_and_pyproject(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    allowances = tmp_path / "x.allowances.yaml"
    allowances.write_bytes(b"allow:\n  - kind: extra\n    reason: caf\xe9\n")
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_bytes(
        b'[tool.kvm-conformance]\ndisable = [{id = "KVMC008", reason = "\xff"}]\n'
    )
    assert cli_main(["diff", str(REFERENCE), str(REFERENCE), "--allowances", str(allowances)]) == 2
    assert cli_main(["lint", "--config", str(pyproject), str(REFERENCE)]) == 2
    err = capsys.readouterr().err
    assert f"{allowances}:3: not UTF-8 text (byte 0xe9)" in err
    assert f"{pyproject}:2: not UTF-8 text (byte 0xff)" in err


def test_a_negative_msr_count_is_no_crash(tmp_path: Path) -> None:
    """KVM_SET_MSRS whose out.ret is negative (no kernel answers that) reads as no answer."""
    text = (ROOT / "conformance" / "qemu" / "references" / "setup.yaml").read_text(encoding="utf-8")
    found = re.search(r"(?ms)^    req: KVM_SET_MSRS\n.*?^    out: \{ret: (\d+)\}", text)
    assert found is not None
    negative = text[: found.start(1)] + "-5" + text[found.end(1) :]
    path = tmp_path / "negative.yaml"
    path.write_text(negative, encoding="utf-8")
    assert cli_main(["lint", str(path)]) in (0, 1)


def test_an_expected_directory_that_is_a_file(tmp_path: Path) -> None:
    plain = tmp_path / "expected"
    plain.write_text("not a directory")
    with pytest.raises(SnapshotError, match="not a directory"):
        SnapshotStore(plain, update=True)
