"""Acceptance of issue 6 on this host: QEMU's references, our scenarios and wrong VMMs checked
against them, strace's view of QEMU against the tracer's."""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from conformance.compare.allowances import allowances_beside, load_allowances
from conformance.compare.conformance import ConformanceResult, compare_with_reference
from conformance.compare.regression import compare_documents
from conformance.gate.references import shipped_references
from conformance.gate.scenarios import trace_scenario
from conformance.model.document import TraceDocument, Value
from conformance.model.scenarios import SCENARIOS
from conformance.normalize.capture import capture_output
from conformance.normalize.strace_import import STRACE_DECODED, import_strace_log
from conformance.qemu.recording import NO_ASLR, find_qemu, record_qemu
from conformance.qemu.scenarios import QEMU_SCENARIOS, qemu_scenario
from conformance.report.deviations import render_conformance
from conformance.snapshot.store import read_document
from conformance.vmm.machine import run_scenario

pytestmark = [pytest.mark.needs_kvm, pytest.mark.needs_ptrace]
needs_qemu = pytest.mark.needs_qemu

REFERENCES = shipped_references()
WRONG_VMM = Path(__file__).parents[1] / "fixtures" / "variants" / "wrong_vmm.py"


def _check(subject: TraceDocument, reference_name: str) -> ConformanceResult:
    path = REFERENCES / f"{reference_name}.yaml"
    return compare_with_reference(
        subject, read_document(path), load_allowances(allowances_beside(path))
    )


@needs_qemu
@pytest.mark.parametrize("scenario", sorted(QEMU_SCENARIOS))
def test_a_re_recorded_reference_matches_the_committed_one(scenario: str) -> None:
    committed = read_document(REFERENCES / f"{scenario}.yaml")
    recording = record_qemu(qemu_scenario(scenario), find_qemu(None))
    comparison = compare_documents(committed, recording.document, scenario=scenario)
    assert comparison.differences == []


def test_qemu_memory_layout_conforms_with_only_reasoned_deviations() -> None:
    subject = trace_scenario(SCENARIOS["qemu-memory-layout"]).document
    result = _check(subject, str(SCENARIOS["qemu-memory-layout"].reference))
    assert result.ok, render_conformance(result, "qemu-memory-layout")
    assert all(deviation.allowed_by is not None for deviation in result.deviations)
    # The host layout is QEMU's; the guest-physical one is not: QEMU splits its RAM slot
    # around the BIOS hole (0xc0000-0x100000) after registering it whole.
    assert result.layout == [
        "slot 0: QEMU registers 1 GiB at gpa 0x0, deletes it, then registers 768 KiB at gpa "
        "0x0; subject registers 1 GiB at gpa 0x0"
    ]


def test_memory_setup_report_names_the_reservation_and_the_size() -> None:
    subject = trace_scenario(SCENARIOS["memory-setup"]).document
    result = _check(subject, str(SCENARIOS["memory-setup"].reference))
    report = render_conformance(result, "memory-setup")
    assert not result.ok
    assert (
        "slot 0: QEMU reserves 1026 MiB PROT_NONE and maps 1 GiB MAP_FIXED inside it; "
        "subject maps 256 KiB directly" in report
    )
    assert (
        "slot 0: QEMU registers 1 GiB at gpa 0x0, deletes it, then registers 768 KiB at gpa 0x0;"
        " subject registers 256 KiB at gpa 0x0" in report
    )
    assert "in.memory_size: QEMU 0x40000000, subject 0x40000" in report


def test_tiny_bios_prints_what_qemu_printed_and_conforms() -> None:
    reference = read_document(REFERENCES / "tiny-bios.yaml")
    ours = run_scenario("tiny-bios")
    assert ours.serial_output.decode() == reference.source["serial_output"]
    assert ours.status == reference.source["exit_status"]  # both report (value << 1) | 1
    result = _check(trace_scenario(SCENARIOS["tiny-bios"]).document, "tiny-bios")
    assert result.ok, render_conformance(result, "tiny-bios")


# (variant, reference, the deviation that must be reported: kind, call, field)
_VARIANTS = [
    ("wrong-slot-flags", "memory-1g", ("field", "KVM_SET_USER_MEMORY_REGION", "in.flags")),
    (
        "misaligned-userspace-addr",
        "memory-1g",
        ("field", "KVM_SET_USER_MEMORY_REGION", "in.userspace_addr"),
    ),
    ("overlapping-slots", "memory-1g", ("field", "KVM_SET_USER_MEMORY_REGION", "errno")),
    ("vcpu-before-memory", "our tiny-bios", ("extra", "KVM_CREATE_VCPU", "")),
    ("missing-set-cpuid2", "tiny-bios", ("missing", "KVM_SET_CPUID2", "")),
]


@pytest.mark.parametrize(
    ("variant", "reference", "expected"), _VARIANTS, ids=[v[0] for v in _VARIANTS]
)
def test_a_wrong_vmm_is_caught_by_call_and_field(
    variant: str, reference: str, expected: tuple[str, str, str]
) -> None:
    traced = capture_output([sys.executable, str(WRONG_VMM), variant], {"tool": variant})
    if reference == "our tiny-bios":
        # QEMU creates its vCPU on another thread, so its trace cannot say whether memory came
        # first; our core's single-threaded trace registers memory before the vCPU, and says so.
        our_core = trace_scenario(SCENARIOS["tiny-bios"]).document
        result = compare_with_reference(traced.document, our_core)
    else:
        result = _check(traced.document, reference)
    found = {(d.kind.value, d.call, d.path) for d in result.failures}
    assert expected in found, render_conformance(result, variant)
    _, call, path = expected
    assert call in render_conformance(result, variant) and path in render_conformance(
        result, variant
    )


def test_overlapping_slots_are_named_in_the_memory_layout() -> None:
    traced = capture_output([sys.executable, str(WRONG_VMM), "overlapping-slots"], {"tool": "x"})
    result = _check(traced.document, "memory-1g")
    assert (
        "slot 0 [0x0, 0x40000000) and slot 1 [0x100000, 0x110000) overlap in the subject "
        "(KVM refused slot 1: EEXIST)" in result.layout
    )


@needs_qemu
def test_strace_and_the_tracer_agree_on_every_field_strace_decodes(tmp_path: Path) -> None:
    """strace and our tracer cannot both ptrace one QEMU, so QEMU runs twice, both times
    without ASLR and on CPU 0; the fields compared (slots, registers, CPUID tables) are the
    ones that do not change from run to run (the regression test above shows it)."""
    scenario = qemu_scenario("memory-1g")
    qemu = find_qemu(None)
    log = tmp_path / "qemu.strace"
    strace = ["strace", "-f", "-v", "-X", "verbose", "-yy", "-o", str(log)]
    subprocess.run(
        ["taskset", "-c", "0", *NO_ASLR, *strace, *scenario.argv(qemu)],
        input=scenario.monitor_input,
        capture_output=True,
        check=True,
    )
    imported = import_strace_log(log).document
    traced = record_qemu(scenario, qemu).document
    theirs, ours = _decoded_structs(imported), _decoded_structs(traced)
    assert set(theirs) == set(ours) and theirs
    for request, structs in theirs.items():
        assert len(structs) == len(ours[request]), request
        for strace_struct, our_struct in zip(structs, ours[request], strict=True):
            assert _cut_to(our_struct, strace_struct) == strace_struct, request


def _decoded_structs(document: TraceDocument) -> dict[str, list[Value]]:
    found: dict[str, list[Value]] = defaultdict(list)
    for calls in document.threads.values():
        for call in calls:
            request = str(call.entry.get("req", ""))
            if request in STRACE_DECODED and "errno" not in call.entry:
                part = "out" if request.startswith("KVM_GET") else "in"
                found[request].append(call.entry.get(part, {}))
    return found


def _cut_to(ours: Value, theirs: Value) -> Value:
    """Our struct cut to the fields strace prints (it leaves padding out); `out.ret` too."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        return {key: _cut_to(ours[key], theirs[key]) for key in theirs if key in ours}
    if isinstance(ours, list) and isinstance(theirs, list):
        return [_cut_to(mine, other) for mine, other in zip(ours, theirs, strict=False)]
    return ours


def test_record_trace_qemu_bad_inputs(tmp_path: Path) -> None:
    def record_trace(*arguments: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "conformance.cli.record_trace", *arguments]
        return subprocess.run(command, capture_output=True, text=True, check=False)

    unknown = record_trace("qemu", "no-such-scenario", "-o", str(tmp_path / "x.yaml"))
    assert unknown.returncode == 2 and "known: memory-1g, setup, tiny-bios" in unknown.stderr
    missing = record_trace("qemu", "setup", "--qemu", str(tmp_path / "qemu"), "-o", "x.yaml")
    assert missing.returncode == 2 and "apt-get install qemu-system-x86" in missing.stderr
    broken = tmp_path / "broken-qemu"
    broken.write_text(
        '#!/bin/sh\n[ "$1" = --version ] && { echo "QEMU emulator version 0"; exit 0; }\n'
        'echo "qemu-system-x86_64: failed to initialize kvm: No such device" >&2\nexit 1\n'
    )
    broken.chmod(0o755)
    failed = record_trace("qemu", "setup", "--qemu", str(broken), "-o", str(tmp_path / "y.yaml"))
    assert failed.returncode == 2
    assert "failed to initialize kvm: No such device" in failed.stderr
    existing = tmp_path / "exists.yaml"
    existing.write_text("keep me")
    refused = record_trace("qemu", "setup", "-o", str(existing))
    assert refused.returncode == 2 and "--force" in refused.stderr
    assert existing.read_text() == "keep me"


@pytest.mark.needs_qemu
def test_record_trace_qemu_never_overwrites_a_log_or_puts_the_log_over_the_trace(
    tmp_path: Path,
) -> None:
    def record_trace(*arguments: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "conformance.cli.record_trace", "qemu", *arguments]
        return subprocess.run(command, capture_output=True, text=True, check=False)

    users_log = tmp_path / "out.log"
    users_log.write_text("the user's own notes")
    refused = record_trace("setup", "-o", str(tmp_path / "out.yaml"))
    assert refused.returncode == 2 and f"{users_log} exists; give --force" in refused.stderr
    assert users_log.read_text() == "the user's own notes"
    assert not (tmp_path / "out.yaml").exists()
    trace = tmp_path / "trace.log"
    recorded = record_trace("setup", "-o", str(trace))
    assert recorded.returncode == 0, recorded.stderr
    assert read_document(trace).source["scenario"] == "setup"  # the trace, not QEMU's output
    assert (tmp_path / "trace.log.log").is_file()
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "out.log",
        "trace.log",
        "trace.log.log",
    ]
