"""`kvm-conformance trace` as a user runs it: the trace on stderr (or -o) and the VMM's stdout its
own, strace's conventions in the text (openat, strings, -s, [pid N] only with several
processes), -e to choose calls, and the raw YAML stream that `diff` and `lint` read back."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.cli.documents import read_trace
from conformance.compare.regression import compare_documents
from conformance.normalize.capture import capture
from conformance.snapshot.store import dump_document

REPO = Path(__file__).resolve().parents[2]
HELLO = [sys.executable, "-m", "conformance", "run", "hello"]
FORKING_VMM = REPO / "tests" / "fixtures" / "tracees" / "forking_vmm.py"

pytestmark = [pytest.mark.needs_kvm, pytest.mark.needs_ptrace]


def _trace(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conformance", "trace", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )


def _kvm_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(("ioctl(", "open"))]


def test_the_trace_goes_to_stderr_and_the_vmms_stdout_stays_its_own() -> None:
    result = _trace("--", *HELLO)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Hello from KVM!\n"  # exactly what the VMM wrote, nothing of ours
    lines = result.stderr.splitlines()
    assert 'openat(AT_FDCWD, "/dev/kvm", O_RDWR|O_CLOEXEC) = 3<kvm>' in lines
    assert not any(line.startswith("[pid") for line in lines)  # one process: no prefix
    # Port data as strace shows a string: the guest's "H", and the line-status answer "`".
    out_h = [line for line in lines if "port=0x3f8" in line and 'data="H"' in line]
    assert (
        len(out_h) == 1
        and '<= {request_interrupt_window=0, immediate_exit=0, io={data="`"}}' in (out_h[0])
    )
    # A table of structs shows its first entry and how many there are, unless -v.
    [cpuid] = [line for line in lines if "KVM_SET_CPUID2" in line]
    assert re.search(r"entries=\[\{function=0x0 .*\}, \.\.\. /\* \d+ entries \*/\]", cpuid)
    assert max(len(line) for line in _kvm_lines(result.stderr)) < 1500


def test_output_file_verbose_and_string_limit(tmp_path: Path) -> None:
    output = tmp_path / "trace.txt"
    result = _trace("-o", str(output), "-v", "-s", "200", "--", *HELLO)
    assert result.returncode == 0 and result.stdout == "Hello from KVM!\n"
    assert "ioctl(" not in result.stderr  # all of it went to the file
    [cpuid] = [line for line in output.read_text().splitlines() if "KVM_SET_CPUID2" in line]
    assert "..." not in cpuid and cpuid.count("function=") > 50  # every entry
    # -s 2: at most two items of an array, as strace: the CPUID padding's three words are cut,
    # and -v's table too.
    _trace("-o", str(output), "-v", "-s", "2", "--", *HELLO)
    [cpuid] = [line for line in output.read_text().splitlines() if "KVM_SET_CPUID2" in line]
    assert cpuid.count("function=") == 2 and "padding=[0x0, 0x0, ...]" in cpuid


def test_e_chooses_the_calls_shown() -> None:
    result = _trace("-e", "ioctl=KVM_RUN,KVM_SET_REGS", "--", *HELLO)
    assert result.returncode == 0, result.stderr
    calls = _kvm_lines(result.stderr)
    assert calls and {re.sub(r"ioctl\(\d+<\w+>, (\w+),.*", r"\1", c) for c in calls} == {
        "KVM_RUN",
        "KVM_SET_REGS",
    }
    assert "mmap(" not in result.stderr
    without_runs = _trace("-e", "trace=ioctl,openat", "-e", "ioctl=!KVM_RUN", "--", *HELLO)
    shown = _kvm_lines(without_runs.stderr)
    assert shown[0].startswith("openat(") and not any("KVM_RUN" in line for line in shown)
    assert any("KVM_SET_REGS" in line for line in shown)


def test_pid_prefix_only_once_a_second_process_is_traced() -> None:
    result = _trace("--", sys.executable, str(FORKING_VMM))
    lines = result.stderr.splitlines()
    fork = next(
        i
        for i, line in enumerate(lines)
        if "+++ process" in line and "started by" in line and i > 0
    )
    assert not any(line.startswith("[pid") for line in lines[:fork])
    assert lines[fork].startswith("[pid ")
    assert any(line.startswith("[pid ") and "KVM_CREATE_VCPU" in line for line in lines[fork:])


def test_a_raw_trace_is_told_apart_and_read_back_as_its_normalized_document(
    tmp_path: Path,
) -> None:
    raw = tmp_path / "raw.yaml"
    result = _trace("--format", "yaml", "--pin", "-o", str(raw), "--", *HELLO)
    assert result.returncode == 0 and result.stdout == "Hello from KVM!\n"
    assert raw.read_text().startswith("schema: kvm-conformance-raw/1\n")
    from_raw = read_trace(raw)
    # The same program traced straight into a document (pinned to one CPU both times: the
    # supported CPUID carries the APIC ID of the CPU that answered).
    with open(os.devnull, "wb") as devnull:
        direct = capture(HELLO, {"tool": "test"}, stdout=devnull.fileno()).document
    comparison = compare_documents(direct, from_raw, scenario="hello")
    assert comparison.ok, comparison.differences[:3]
    assert (
        dump_document(from_raw).split("threads:")[1] == dump_document(direct).split("threads:")[1]
    )
    linted = subprocess.run(
        [sys.executable, "-m", "conformance", "lint", str(raw)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert linted.returncode == 0 and linted.stdout.endswith(": 0 errors, 0 warnings\n")
