"""The rules on real traces: each deliberately wrong variant of the VMM core, traced against
/dev/kvm, gets its finding at the right call and its right twin none; QEMU and our scenarios
lint with no errors (QEMU's warnings are the quirks docs/rules.md lists)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from conformance.cli.main import main
from conformance.lint import Finding, Severity, lint
from conformance.model.calls import entries, section
from conformance.model.document import TraceDocument
from conformance.model.host_profile import HostProfile
from conformance.model.host_symbols import resolve_call
from conformance.model.scenarios import SCENARIOS
from conformance.normalize.normalizer import Normalizer
from conformance.tracer import trace
from conformance.vmm.guests import guest

pytestmark = [pytest.mark.needs_kvm, pytest.mark.needs_ptrace]

VARIANTS = Path(__file__).resolve().parent.parent / "fixtures" / "vmm_variants" / "variants.py"

# variant -> (rule, request of the reported call, which of the thread's calls of that request)
EXPECTED = {
    "KVMC001": ("KVMC001", "KVM_SET_MSRS", 0),
    "KVMC002-lapic": ("KVMC002", "KVM_SET_MSRS", 0),
    "KVMC002-tsc": ("KVMC002", "KVM_SET_MSRS", 0),
    "KVMC003": ("KVMC003", "KVM_IRQFD", 0),
    "KVMC003-dropped": ("KVMC003", "KVM_IRQFD", 0),
    "KVMC003-changed": ("KVMC003", "KVM_IRQFD", 0),
    "KVMC004": ("KVMC004", "KVM_SET_CPUID2", 1),
    "KVMC005-length": ("KVMC005", "KVM_SET_USER_MEMORY_REGION", 0),
    "KVMC005-unmap": ("KVMC005", "munmap", 0),
    "KVMC006": ("KVMC006", "KVM_SET_USER_MEMORY_REGION", 0),
    "KVMC008": ("KVMC008", "KVM_SET_TSS_ADDR", 0),
    "KVMC009": ("KVMC009", "KVM_RUN", 0),
    "KVMC010": ("KVMC010", "KVM_RUN", 0),
    "KVMC011": ("KVMC011", "KVM_UNREGISTER_COALESCED_MMIO", 0),
    "KVMC012": ("KVMC012", "close", 0),
}
# Each wrong variant's finding is an error, but for these.
WARNINGS = {"KVMC003-changed", "KVMC008"}
# QEMU 7.2's KVMC008 warnings, documented in docs/rules.md ("Known QEMU quirks").
QEMU_QUIRKS = {"KVM_X86_SET_MSR_FILTER", "KVM_ENABLE_CAP", "KVM_SET_VAPIC_ADDR"}


def traced(argv: list[str], stdin: bytes | None = None) -> TraceDocument:
    normalizer = Normalizer({"argv": list(argv)})
    devnull = os.open(os.devnull, os.O_RDWR)
    read_end = None
    try:
        if stdin is not None:
            read_end, write_end = os.pipe()
            os.write(write_end, stdin)
            os.close(write_end)
        outcome = trace(argv, normalizer.add, stdin=read_end, stdout=devnull, stderr=devnull)
    finally:
        os.close(devnull)
        if read_end is not None:
            os.close(read_end)
    assert outcome.opened_kvm, outcome.message
    return normalizer.finish()


def variant(name: str, kind: str) -> TraceDocument:
    return traced([sys.executable, str(VARIANTS), name, kind])


def errors(findings: list[Finding]) -> list[str]:
    return [f"{f.rule_id} {f.where}: {f.message}" for f in findings if f.severity is Severity.ERROR]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_wrong_variant_is_found_at_its_call(name: str) -> None:
    rule, request, occurrence = EXPECTED[name]
    document = variant(name, "wrong")
    found = [f for f in lint(document) if f.rule_id == rule]
    assert found, f"{rule} not reported"
    finding = found[0]
    calls = document.threads[finding.thread]
    positions = [index for index, call in enumerate(calls) if call.name == request]
    assert (finding.thread, finding.request) == ("main", request)
    assert finding.index == positions[occurrence]
    expected = Severity.WARNING if name in WARNINGS else Severity.ERROR
    assert finding.severity is expected


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_right_variant_gives_no_finding(name: str) -> None:
    assert lint(variant(name, "right")) == []


def test_kvm_gives_a_new_vcpu_rdx_0x600_whatever_its_cpuid_says() -> None:
    """What KVMC010 rests on, on this kernel: the registers KVM set at KVM_CREATE_VCPU hold
    RDX 0x600 after KVM_SET_CPUID2, not the processor signature CPUID.1:EAX gives."""
    document = variant("KVMC010", "wrong")
    calls = {call.name: call.entry for call in document.threads["main"]}
    rdx = section(calls["KVM_GET_REGS"], "out")["rdx"]
    cpuid = resolve_call(calls["KVM_SET_CPUID2"], HostProfile.of(document))  # entries: host
    [leaf_1] = [e for e in entries(section(cpuid, "in")) if e["function"] == 1]
    assert rdx == 0x600 and leaf_1["eax"] != 0x600


def test_lint_traces_a_command_and_reports_sarif(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    kept = tmp_path / "live.yaml"
    status = main(["lint", "--format", "sarif", "--trace-output", str(kept), "--",
                   sys.executable, str(VARIANTS), "KVMC003", "wrong"])  # fmt: skip
    assert status == 1
    log = json.loads(capsys.readouterr().out)
    [result] = log["runs"][0]["results"]
    assert result["ruleId"] == "KVMC003" and result["properties"]["thread"] == "main"
    # A live trace is written to a file, and the finding points at its call's line there.
    [location] = result["locations"]
    line = location["physicalLocation"]["region"]["startLine"]
    assert location["physicalLocation"]["artifactLocation"]["uri"] == kept.resolve().as_uri()
    assert "KVM_IRQFD" in kept.read_text().splitlines()[line - 1]


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_our_scenarios_lint_without_errors(scenario: str) -> None:
    document = traced([sys.executable, "-m", "conformance", "run", scenario])
    assert errors(lint(document)) == []


QEMU = ["qemu-system-x86_64", "-accel", "kvm", "-nographic", "-nodefaults"]


def qemu_findings(document: TraceDocument) -> list[Finding]:
    findings = lint(document)
    assert errors(findings) == []
    unexpected = [f for f in findings if f.rule_id != "KVMC008" or f.request not in QEMU_QUIRKS]
    assert unexpected == []
    return findings


@pytest.mark.needs_qemu
def test_qemu_setup_lints_without_errors() -> None:
    qemu_findings(traced([*QEMU, "-m", "1G", "-S", "-monitor", "stdio"], stdin=b"quit\n"))


@pytest.mark.needs_qemu
def test_qemu_tiny_bios_lints_without_errors(tmp_path: Path) -> None:
    image = tmp_path / "tiny_bios.bin"
    image.write_bytes(guest("tiny_bios").image)
    argv = [*QEMU, "-bios", str(image), "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-serial", "stdio"]  # fmt: skip
    document = traced(argv)
    assert any(call.name == "KVM_RUN" for calls in document.threads.values() for call in calls)
    qemu_findings(document)
