"""The same VMM gives the same verdict on any host; a VMM that decides otherwise is caught on any.

tests/fixtures/hosts/ holds the six scenarios' snapshots and the three QEMU references as two
other hosts recorded them (schema 1, as recorded): `amd-epyc` (75 supported CPUID entries, the
project's earlier recordings) and `intel-xeon` (59; ../shared/hosts/, its references with this
project's allowances beside them). Whatever host runs the suite, both are another host's: each
test holds this host's traces against them in both directions (their snapshot, our run; our
trace as the snapshot, theirs as the run).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.compare.allowances import allowances_beside, load_allowances
from conformance.compare.conformance import compare_with_reference
from conformance.compare.regression import Comparison, compare_documents
from conformance.gate.host_variants import trace_host_class
from conformance.model.document import TraceDocument
from conformance.model.host_profile import HostProfile
from conformance.model.scenarios import SCENARIOS
from conformance.normalize.capture import capture_output
from conformance.snapshot.store import read_document

REPO = Path(__file__).resolve().parents[2]
HOSTS = REPO / "tests" / "fixtures" / "hosts"
OTHER_HOSTS = ("amd-epyc", "intel-xeon")
REFERENCES = ("setup", "memory-1g", "tiny-bios")
POLICIES = REPO / "tests" / "fixtures" / "vmm_variants" / "host_policies.py"

pytestmark = [pytest.mark.needs_kvm, pytest.mark.needs_ptrace]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    return subprocess.run(
        [sys.executable, "-m", "conformance", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
        check=False,
    )


def _snapshot(host: str, scenario: str) -> TraceDocument:
    return read_document(HOSTS / host / "expected" / f"{scenario}.yaml")


@pytest.mark.parametrize("host", OTHER_HOSTS)
def test_check_passes_against_another_hosts_snapshots_and_references(host: str) -> None:
    expected, references = HOSTS / host / "expected", HOSTS / host / "qemu"
    result = _run("check", "--expected", str(expected), "--references", str(references))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1].endswith(f": {len(SCENARIOS)} passed")
    theirs = HostProfile.of(_snapshot(host, "hello"))
    ours = HostProfile.of(read_document(REPO / "expected" / "hello.yaml"))
    if theirs.cpuid != ours.cpuid:  # a host whose supported CPUID differs from this one's
        head = f"host: snapshot recorded on {theirs.name} ({theirs.cpuid_entries()} CPUID entries)"
        assert result.stdout.count(head) == 1, result.stdout
        assert "host: QEMU reference recorded on " in result.stdout


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_the_two_hosts_recordings_of_a_scenario_differ_in_no_decision(scenario: str) -> None:
    amd, intel = (HOSTS / host / "expected" / f"{scenario}.yaml" for host in OTHER_HOSTS)
    for subject, reference in ((amd, intel), (intel, amd)):
        result = _run("diff", str(subject), str(reference))
        assert result.returncode == 0, result.stdout
        assert ": ok" in result.stdout.splitlines()[0]
        assert result.stdout.count("host: ") <= 1


@pytest.mark.parametrize("reference", REFERENCES)
def test_the_two_hosts_qemu_references_differ_in_no_decision(reference: str) -> None:
    amd, intel = (HOSTS / host / "qemu" / f"{reference}.yaml" for host in OTHER_HOSTS)
    result = _run("diff", str(intel), str(amd))
    assert result.returncode == 0, result.stdout
    assert result.stdout.splitlines()[0].endswith(": ok (0 allowed)")
    block = result.stdout[result.stdout.index("host: ") :]
    assert result.stdout.count("host: ") == 1
    assert block.startswith(
        "host: reference recorded on AMD EPYC (75 CPUID entries), subject on "
        "Intel(R) Xeon(R) Processor (59)\n"
    )
    for difference in (
        "CPU vendor: AuthenticAMD → GenuineIntel",
        "MSR index list: 40 → 41 entries (+0x3a)",
        "TSC: 2596150 kHz → 2599998 kHz",
        "MSR 0x8b: 0x1000065 → 0x100000000: follows the CPU vendor, not compared",
    ):
        assert f"\n  {difference}\n" in block, block
    back = _run("diff", str(amd), str(intel))
    assert back.returncode == 0 and back.stdout.splitlines()[0].endswith(": ok (0 allowed)")


# -- no over-masking: a VMM that decides otherwise is caught across hosts ---------------------


def _tables() -> list[dict[tuple[int, int], dict[str, int]]]:
    """The supported CPUID of this host and of the two others."""
    here = HostProfile.of(_variant("as-is")).cpuid
    return [here, *(HostProfile.of(_snapshot(host, "tiny-bios")).cpuid for host in OTHER_HOSTS)]


def _leaf1_ecx_bit(supported: bool) -> int:
    """A CPUID.1:ECX bit every host reports (supported) or none does: a change on every host."""
    values = [table[(0x1, 0)]["ecx"] for table in _tables()]
    for bit in range(32):
        if all(bool(value >> bit & 1) is supported for value in values):
            return bit
    raise AssertionError(f"no CPUID.1:ECX bit {'every' if supported else 'no'} host reports")


@functools.cache
def _variant(name: str, bit: int = 0) -> TraceDocument:
    argv = [sys.executable, str(POLICIES), name, str(bit)]
    captured = capture_output(argv, {"tool": "host_policies.py", "argv": [name]})
    assert captured.outcome.exit_status == 33, captured.error_output  # the guest's own status
    return captured.document


def _variant_for(name: str) -> TraceDocument:
    if name == "clear-supported-bit":
        return _variant(name, _leaf1_ecx_bit(supported=True))
    if name == "set-unsupported-bit":
        return _variant(name, _leaf1_ecx_bit(supported=False))
    return _variant(name)


def _named(comparison: Comparison) -> set[tuple[str, str]]:
    return {(d.call_name, d.path) for d in comparison.failures}


# Each variant and the call and field a comparison must name.
CAUGHT = {
    "clear-supported-bit": ("KVM_SET_CPUID2", "in.entries[0x1/0x0].ecx"),
    "set-unsupported-bit": ("KVM_SET_CPUID2", "in.entries[0x1/0x0].ecx"),
    "drop-leaf": ("KVM_SET_CPUID2", "in.entries[0x7/0x0]"),
    "add-leaf": ("KVM_SET_CPUID2", "in.entries[0x40000010/0x0]"),
    "reset-edx-constant": ("KVM_SET_REGS", "in.rdx"),
}


@pytest.mark.parametrize("host", OTHER_HOSTS)
def test_the_vmm_core_unchanged_matches_another_hosts_snapshot_both_ways(host: str) -> None:
    ours, theirs = _variant("as-is"), _snapshot(host, "tiny-bios")
    assert compare_documents(theirs, ours, scenario="tiny-bios").ok
    assert compare_documents(ours, theirs, scenario="tiny-bios").ok


@pytest.mark.parametrize("host", OTHER_HOSTS)
@pytest.mark.parametrize("variant", list(CAUGHT))
def test_a_vmm_deciding_its_host_inputs_otherwise_is_caught_both_ways(
    variant: str, host: str
) -> None:
    ours, theirs = _variant_for(variant), _snapshot(host, "tiny-bios")
    for expected, actual in ((theirs, ours), (ours, theirs)):
        comparison = compare_documents(expected, actual, scenario="tiny-bios")
        assert _named(comparison) == {CAUGHT[variant]}, comparison.differences


def _tsc_deviations(subject: TraceDocument, reference: TraceDocument, path: Path) -> list[str]:
    allowances = load_allowances(allowances_beside(path)) if path.exists() else None
    result = compare_with_reference(subject, reference, allowances)
    return [d.path for d in result.failures if d.call == "KVM_SET_TSC_KHZ"]


@pytest.mark.parametrize("host", OTHER_HOSTS)
def test_a_tsc_frequency_other_than_the_hosts_is_caught_against_qemu_both_ways(host: str) -> None:
    path = HOSTS / host / "qemu" / "tiny-bios.yaml"
    qemu = read_document(path)
    right, wrong = _variant("tsc-host"), _variant("tsc-other")
    assert _tsc_deviations(right, qemu, path) == []
    assert _tsc_deviations(wrong, qemu, path) == ["arg"]
    # Ours as the reference: QEMU's host.tsc_khz against our literal frequency.
    assert _tsc_deviations(qemu, wrong, Path("ours")) == ["arg"]
    assert _tsc_deviations(qemu, right, Path("ours")) == []


# -- a VMM that passes the host's table on: the same snapshot whichever CPU answered ----------

PASSTHROUGH = REPO / "tests" / "fixtures" / "tracees" / "cpuid_passthrough.c"
PASSTHROUGH_TEST = """
def test_passthrough(kvm_conformance):
    kvm_conformance.trace([{binary!r}]).matches("passthrough")
"""


@pytest.mark.needs_gcc
def test_a_vmm_passing_the_supported_cpuid_on_gets_one_snapshot_on_every_cpu(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)  # the plugin writes nothing where CI is set
    binary = pytester.path / "passthrough"
    subprocess.run(["gcc", "-O1", "-Wall", "-o", str(binary), str(PASSTHROUGH)], check=True)
    pytester.makepyfile(PASSTHROUGH_TEST.format(binary=str(binary)))
    pytest_on = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]
    snapshot = pytester.path / "expected" / "passthrough.yaml"

    created = pytester.run("taskset", "-c", "0", *pytest_on, "--kvm-snapshot-update")
    assert created.ret == 0, created.stdout.str()
    first = snapshot.read_text()
    assert "req: KVM_SET_CPUID2, in: {padding: 0x0, nent: host, entries: host}" in first

    on_the_other_cpu = pytester.run("taskset", "-c", "1", *pytest_on)
    assert on_the_other_cpu.ret == 0, on_the_other_cpu.stdout.str()
    on_the_other_cpu.stdout.fnmatch_lines(["*1 compared, 0 differing*"])
    rewritten = pytester.run("taskset", "-c", "1", *pytest_on, "--kvm-snapshot-update")
    assert rewritten.ret == 0
    rewritten.stdout.fnmatch_lines(["*1 unchanged*"])
    assert snapshot.read_text() == first


# -- per-host variants: the fallback, written only when the hosts cannot be reconciled --------


def _other_class_fixture() -> Path:
    """The fixture snapshots of a host of another vendor than this one."""
    ours = trace_host_class(_variant("as-is"))
    for host in OTHER_HOSTS:
        if trace_host_class(_snapshot(host, "tiny-bios")) != ours:
            return HOSTS / host / "expected"
    raise AssertionError(f"no fixture host of another vendor than {ours}")


def test_a_path_only_another_kind_of_host_takes_gets_a_variant_snapshot(tmp_path: Path) -> None:
    fixture = _other_class_fixture() / "tiny-bios.yaml"
    ours = trace_host_class(_variant("as-is"))
    recorded = fixture.read_text()
    # As if the VMM really did something else on that kind of host (a register it set).
    snapshot = tmp_path / "tiny-bios.yaml"
    snapshot.write_text(
        recorded.replace("rip: 0xfff0, rflags: 0x2}", "rip: 0xfff0, rflags: 0x202}")
    )
    assert snapshot.read_text() != recorded
    variant = tmp_path / f"tiny-bios.{ours}.yaml"
    before = snapshot.read_bytes()

    assert _run("check", "--expected", str(tmp_path), "--scenario", "tiny-bios").returncode == 1
    updated = _run("check", "--update", "--expected", str(tmp_path), "--scenario", "tiny-bios")
    assert updated.returncode == 0, updated.stdout
    assert f"snapshot: created (tiny-bios.{ours}.yaml)" in updated.stdout
    assert snapshot.read_bytes() == before and variant.exists()

    passed = _run("check", "--expected", str(tmp_path), "--scenario", "tiny-bios")
    assert passed.returncode == 0, passed.stdout
    assert f"snapshot: equal (tiny-bios.{ours}.yaml)" in passed.stdout

    # The other host's snapshot as recorded reconciles: the variant goes, the snapshot stays.
    snapshot.write_text(recorded)
    again = _run("check", "--update", "--expected", str(tmp_path), "--scenario", "tiny-bios")
    assert again.returncode == 0, again.stdout
    assert not variant.exists() and snapshot.read_text() == recorded
    unchanged = _run("check", "--update", "--expected", str(tmp_path), "--scenario", "tiny-bios")
    assert "snapshot: unchanged" in unchanged.stdout and snapshot.read_text() == recorded
