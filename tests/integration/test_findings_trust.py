"""Findings a VMM author can trust (issue 18), on real traces: QEMU against itself, a C VMM
that differs from QEMU in three known ways, the guest memory both VMMs ran, and record-trace
vmm as a face that behaves like `trace`."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.compare.allowances import allowances_beside, load_allowances
from conformance.compare.conformance import ConformanceResult, compare_with_reference
from conformance.gate.scenarios import trace_scenario
from conformance.model.document import GUEST_MEMORY, TraceDocument
from conformance.normalize.capture import capture_output
from conformance.qemu.recording import find_qemu, record_qemu
from conformance.qemu.scenarios import QEMU_SCENARIOS, qemu_scenario, tiny_bios_image
from conformance.report.deviations import render_conformance
from conformance.snapshot.store import read_document

pytestmark = [pytest.mark.needs_kvm, pytest.mark.needs_ptrace]

REFERENCES = Path(__file__).parents[2] / "traces" / "qemu"
TRACEES = Path(__file__).parents[1] / "fixtures" / "tracees"


def _against_tiny_bios(subject: TraceDocument, reference: TraceDocument) -> ConformanceResult:
    allowances = load_allowances(allowances_beside(REFERENCES / "tiny-bios.yaml"))
    return compare_with_reference(subject, reference, allowances)


@pytest.fixture(scope="module")
def qemu_recordings() -> dict[str, tuple[TraceDocument, TraceDocument]]:
    qemu = find_qemu(None)
    return {
        name: (record_qemu(qemu_scenario(name), qemu).document,
               record_qemu(qemu_scenario(name), qemu).document)
        for name in QEMU_SCENARIOS
    }  # fmt: skip


@pytest.mark.needs_qemu
@pytest.mark.parametrize("name", sorted(QEMU_SCENARIOS))
def test_qemu_against_a_second_run_of_itself_deviates_nowhere(
    name: str, qemu_recordings: dict[str, tuple[TraceDocument, TraceDocument]]
) -> None:
    """Two recordings of one QEMU command differ in clocks and stack bytes (the PIT's load
    times, kvmclock, SREGS2's PDPTRs, IRQCHIP padding): none of it is a deviation, all of it
    is accounted for as not a decision."""
    first, second = qemu_recordings[name]
    result = compare_with_reference(second, first)
    assert result.deviations == [], render_conformance(result, name)
    assert result.layout == []
    assert {(item.row.struct, item.row.field) for item in result.left_out} >= {
        ("kvm_pit_channel_state", "count_load_time")
    }
    if name == "tiny-bios":  # the one scenario whose guest runs
        assert result.exits is not None and result.exits.compared


@pytest.mark.parametrize("name", sorted(QEMU_SCENARIOS))
def test_a_reference_against_itself_has_no_finding_of_any_kind(name: str) -> None:
    reference = read_document(REFERENCES / f"{name}.yaml")
    result = compare_with_reference(reference, reference)
    assert (result.deviations, result.layout, result.left_out) == ([], [], [])
    report = render_conformance(result, name).splitlines()
    assert report[0].endswith(": ok (0 allowed)")
    assert [line for line in report[1:] if not line.startswith("KVM_RUN exits compared")] == []


@pytest.mark.needs_qemu
def test_qemu_and_our_core_ran_the_same_guest_memory(
    qemu_recordings: dict[str, tuple[TraceDocument, TraceDocument]],
) -> None:
    qemu, _ = qemu_recordings["tiny-bios"]
    ours = trace_scenario("tiny-bios").document
    assert ours.source[GUEST_MEMORY] == qemu.source[GUEST_MEMORY]
    result = _against_tiny_bios(ours, qemu)
    assert result.exits is not None and result.exits.compared
    assert result.ok, render_conformance(result, "tiny-bios")


@pytest.fixture(scope="module")
def c_vmm(tmp_path_factory: pytest.TempPathFactory) -> str:
    binary = tmp_path_factory.mktemp("tracees") / "tiny_bios_vmm"
    source = TRACEES / "tiny_bios_vmm.c"
    subprocess.run(["gcc", "-O1", "-Wall", "-o", str(binary), str(source)], check=True)
    return str(binary)


def _c_vmm_document(c_vmm: str, *arguments: str) -> TraceDocument:
    traced = capture_output([c_vmm, *arguments], {"tool": "tiny_bios_vmm"})
    assert traced.outcome.exit_status == (0x10 << 1) | 1, traced.error_output
    return traced.document


@pytest.mark.needs_gcc
@pytest.mark.needs_qemu
def test_a_c_vmm_that_differs_in_three_ways_is_told_all_three(
    c_vmm: str, qemu_recordings: dict[str, tuple[TraceDocument, TraceDocument]]
) -> None:
    """Dirty logging on its RAM slot (a field QEMU's allowances do not cover: they allow the
    slots' addresses and sizes, not their flags), KVM_SET_NR_MMU_PAGES with the capability
    it needs (calls QEMU never makes; the READONLY_MEM allowance does not cover another
    capability), and no KVM_SET_CPUID2. Nothing else: its exits are QEMU's, same guest."""
    qemu, _ = qemu_recordings["tiny-bios"]
    result = _against_tiny_bios(_c_vmm_document(c_vmm, str(tiny_bios_image())), qemu)
    named = {(d.kind.value, d.call, d.path or d.arg) for d in result.failures}
    assert named == {
        ("field", "KVM_SET_USER_MEMORY_REGION", "in.flags"),
        ("extra", "KVM_CHECK_EXTENSION", "KVM_CAP_MMU_SHADOW_CACHE_CONTROL"),
        ("extra", "KVM_SET_NR_MMU_PAGES", ""),
        ("missing", "KVM_SET_CPUID2", ""),
    }, render_conformance(result, "tiny_bios_vmm")
    assert result.exits is not None and result.exits.compared
    report = render_conformance(result, "tiny_bios_vmm")
    assert "QEMU never makes KVM_SET_NR_MMU_PAGES" in report
    alike = _against_tiny_bios(
        _c_vmm_document(c_vmm, str(tiny_bios_image()), "--same-as-qemu"), qemu
    )
    assert alike.ok, render_conformance(alike, "tiny_bios_vmm --same-as-qemu")


@pytest.mark.needs_gcc
@pytest.mark.needs_qemu
def test_exits_of_another_guest_are_one_summary_line(
    c_vmm: str, tmp_path: Path, qemu_recordings: dict[str, tuple[TraceDocument, TraceDocument]]
) -> None:
    """The same C VMM running another message: every exit differs in data, none is a
    deviation; the report says why they were not compared and sums each side up."""
    image = bytearray(tiny_bios_image().read_bytes())
    offset = image.index(b"tiny-bios: hello")
    image[offset : offset + 9] = b"TINY-BIOS"
    other = tmp_path / "other_bios.bin"
    other.write_bytes(bytes(image))
    qemu, _ = qemu_recordings["tiny-bios"]
    result = _against_tiny_bios(_c_vmm_document(c_vmm, str(other), "--same-as-qemu"), qemu)
    assert result.ok and not [d for d in result.deviations if d.call == "KVM_RUN"]
    assert result.exits is not None and not result.exits.compared
    report = render_conformance(result, "other guest")
    assert "KVM_RUN exits not compared: the guests differ" in report
    assert (
        "  subject: 79 KVM_RUN calls: KVM_EXIT_IO x79 (in 0x3fd x39, out 0x3f8 x39, out 0xf4 x1)"
        in report
    )


def _record_trace(*arguments: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    command = [sys.executable, "-m", "conformance.cli.record_trace", *arguments]
    return subprocess.run(command, input=stdin, capture_output=True, check=False, timeout=120)


@pytest.mark.needs_qemu
def test_record_trace_vmm_feeds_the_vmm_our_stdin(tmp_path: Path) -> None:
    """QEMU driven over its monitor on stdin ends when it reads `quit`, as under `trace`."""
    output = tmp_path / "qemu.yaml"
    argv = [
        find_qemu(None),
        "-accel",
        "kvm",
        "-nographic",
        "-nodefaults",
        "-S",
        "-monitor",
        "stdio",
    ]
    done = _record_trace("vmm", "-o", str(output), "--", *argv, stdin=b"quit\n")
    assert done.returncode == 0, done.stderr
    assert b"(qemu)" in done.stdout  # QEMU's monitor prompt reached our stdout
    assert read_document(output).source["exit_status"] == 0


def test_record_trace_vmm_exits_with_the_vmms_status(tmp_path: Path) -> None:
    output = tmp_path / "failed.yaml"
    failing = [sys.executable, "-c", "import sys; print('to stdout'); sys.exit(3)"]
    done = _record_trace("vmm", "-o", str(output), "--", *failing)
    assert done.returncode == 3
    assert done.stdout == b"to stdout\n"
    assert read_document(output).source["exit_status"] == 3
    # Without -o the document is on stdout: the VMM's own stdout goes to stderr instead.
    to_stdout = _record_trace("vmm", "--", *failing)
    assert to_stdout.returncode == 3
    assert to_stdout.stdout.startswith(b"schema: kvm-conformance/")
    assert b"to stdout" in to_stdout.stderr
    kill_itself = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    killed = _record_trace("vmm", "-o", str(tmp_path / "k.yaml"), "--", sys.executable, "-c",
                           kill_itself)  # fmt: skip
    assert killed.returncode == 128 + signal.SIGKILL


@pytest.mark.needs_qemu
def test_the_text_trace_names_register_page_registers(tmp_path: Path) -> None:
    """`kvm-conformance trace` of QEMU shows KVM_SET_LAPIC's page, KVM_SET_XSAVE's area and
    the IOAPIC's pins by register, as the normalized document does."""
    output = tmp_path / "qemu.txt"
    argv = [
        find_qemu(None),
        "-accel",
        "kvm",
        "-nographic",
        "-nodefaults",
        "-S",
        "-monitor",
        "stdio",
    ]
    command = [sys.executable, "-m", "conformance", "trace", "-o", str(output), "--", *argv]
    subprocess.run(command, input=b"quit\n", capture_output=True, check=True, timeout=120)
    lines = output.read_text().splitlines()
    [lapic] = [line for line in lines if "KVM_SET_LAPIC" in line]
    assert "{regs={apic_id=" in lapic and "svr=0xff" in lapic and "timer_divide_config=" in lapic
    [xsave, *_] = [line for line in lines if "KVM_SET_XSAVE" in line]
    assert "region={fcw=0x37f" in xsave and "mxcsr=0x1f80" in xsave and "xstate_bv=" in xsave
    ioapic = next(line for line in lines if "KVM_SET_IRQCHIP" in line and "ioapic=" in line)
    assert "redirtbl=[{vector=" in ioapic and "bits=" not in ioapic
