"""`record-trace qemu -o FILE -- QEMU ARGS`: a project's own QEMU command line as a reference."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conformance.gate.project import load_project
from conformance.snapshot.store import read_document

pytestmark = [pytest.mark.needs_kvm, pytest.mark.needs_ptrace, pytest.mark.needs_qemu]


def test_a_qemu_command_line_of_ones_own_becomes_a_reference(tmp_path: Path) -> None:
    reference = tmp_path / "qemu" / "paused.yaml"
    qemu = ["qemu-system-x86_64", "-accel", "kvm", "-m", "64M", "-nographic", "-nodefaults"]
    record = [sys.executable, "-m", "conformance.cli.record_trace", "qemu", "-o", str(reference)]
    result = subprocess.run(
        [*record, "--stdin", "quit\\n", "--", *qemu, "-S", "-monitor", "stdio"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    document = read_document(reference)
    assert document.source["scenario"] == "paused" and document.source["exit_status"] == 0
    argv = document.source["argv"]
    assert isinstance(argv, list) and argv[1:] == [*qemu[1:], "-S", "-monitor", "stdio"]
    assert any(call.name == "KVM_CREATE_VM" for call in document.threads["main"])
    assert (tmp_path / "qemu" / "paused.log").read_text().startswith("$ ")

    # ... and a scenario of the project may name it.
    (tmp_path / "kvm-conformance.toml").write_text(
        '[scenarios.mine]\ncommand = ["./vmm"]\nreference = "qemu/paused.yaml"\n'
    )
    assert load_project(None, tmp_path).scenarios["mine"].reference == reference.resolve()

    again = subprocess.run(
        [*record, "--", *qemu],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert again.returncode == 2 and "exists; give --force to replace it" in again.stderr


def test_a_shipped_scenario_outside_this_repository_needs_an_output_file(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "conformance.cli.record_trace", "qemu", "tiny-bios"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "give the file to write with -o FILE" in result.stderr
