"""`kvm-conformance check`, run as CI runs it: a subprocess with piped output, real /dev/kvm."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.gate.references import shipped_references
from conformance.model.scenarios import SCENARIOS

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.needs_kvm, pytest.mark.needs_ptrace]


def _check(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    # CI unset: on CI, `check --update` writes nothing (these tests check what it writes).
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    return subprocess.run(
        [sys.executable, "-m", "conformance", "check", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
        check=False,
    )


@pytest.fixture
def expected_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "expected"
    shutil.copytree(REPO / "expected", copy)
    return copy


def test_the_committed_expected_traces_pass() -> None:
    result = _check()
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    scenario_lines = lines[: len(SCENARIOS)]
    assert [line.split()[:2] for line in scenario_lines] == [["pass", name] for name in SCENARIOS]
    by_scenario = {line.split()[1]: line for line in scenario_lines}
    assert all(line.endswith("lint: ok") for line in by_scenario.values())
    # Equal in the VMM's decisions, on this host or another (whose block follows the lines).
    assert all("  snapshot: equal" in line for line in by_scenario.values())
    assert all(line.startswith(("host: ", "  ")) for line in lines[len(SCENARIOS) : -1] if line)
    assert "qemu memory-1g: ok" in by_scenario["qemu-memory-layout"]
    assert "qemu tiny-bios: ok" in by_scenario["tiny-bios"]
    # The seed article's program: its deviations from QEMU are the point of the scenario.
    assert "qemu memory-1g: deviates on purpose" in by_scenario["memory-setup"]
    assert lines[-1].startswith(f"{len(SCENARIOS)} scenarios in ")
    assert lines[-1].endswith(f": {len(SCENARIOS)} passed")
    assert result.stderr == ""  # progress is for terminals only


def test_one_changed_field_fails_naming_scenario_call_and_field(expected_copy: Path) -> None:
    snapshot = expected_copy / "memory-setup.yaml"
    snapshot.write_text(
        snapshot.read_text().replace("guest_phys_addr: 0x0,", "guest_phys_addr: 0x1000,")
    )

    result = _check("--expected", str(expected_copy), "--scenario", "memory-setup")

    assert result.returncode == 1, result.stderr
    assert result.stdout.startswith("FAIL      memory-setup")
    assert "  snapshot: FAIL, 1 difference  " in result.stdout.splitlines()[0]
    assert (
        "thread main, call #4 KVM_SET_USER_MEMORY_REGION: in.guest_phys_addr: "
        "expected 0x1000, got 0x0"
    ) in result.stdout
    assert (
        f"to accept: kvm-conformance check --update --scenario memory-setup "
        f"--expected {expected_copy}\n"
    ) in result.stdout
    assert result.stdout.splitlines()[-1].endswith(": 1 failed")
    assert "\033[" not in result.stdout  # piped: no colour


def test_json_names_the_difference(expected_copy: Path) -> None:
    snapshot = expected_copy / "memory-setup.yaml"
    snapshot.write_text(
        snapshot.read_text().replace("guest_phys_addr: 0x0,", "guest_phys_addr: 0x1000,")
    )

    result = _check(
        "--expected", str(expected_copy), "--scenario", "memory-setup", "--format", "json"
    )

    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    [scenario] = report["scenarios"]
    assert scenario["scenario"] == "memory-setup" and scenario["result"] == "failed"
    [difference] = scenario["differences"]
    assert difference["call"] == "KVM_SET_USER_MEMORY_REGION"
    assert difference["field"] == "in.guest_phys_addr"
    assert (difference["expected"], difference["actual"]) == (0x1000, 0)
    lines = snapshot.read_text().splitlines()
    line = 1 + next(i for i, text in enumerate(lines) if "KVM_SET_USER_MEMORY_REGION" in text)
    assert difference["expected_line"] == line  # the line of that call in the file


def test_a_malformed_snapshot_is_an_error_naming_file_and_line(expected_copy: Path) -> None:
    snapshot = expected_copy / "hello.yaml"
    lines = snapshot.read_text().splitlines(keepends=True)
    first_call = next(i for i, line in enumerate(lines) if line.startswith("  - {call: "))
    lines[first_call] = "  - {call: ioctl, fd: vcpu0, req: KVM_RUN, repeat: 0}\n"
    snapshot.write_text("".join(lines))

    result = _check("--expected", str(expected_copy))

    assert result.returncode == 2
    assert result.stdout == ""  # refused before tracing anything
    assert result.stderr == (
        f"kvm-conformance: {snapshot}:{first_call + 1}: main[0] repeat: expected a positive "
        "integer, found 0\n"
    )


def test_usage_and_environment_errors_exit_2(tmp_path: Path) -> None:
    unconfigured = _check(cwd=tmp_path)
    assert unconfigured.returncode == 2
    assert f"no kvm-conformance.toml or pyproject.toml in {tmp_path} or above" in (
        unconfigured.stderr
    )

    absent = _check("--expected", str(tmp_path / "nowhere"))
    assert absent.returncode == 2
    assert "nowhere: no such directory of snapshots; create it with --update" in absent.stderr

    unknown = _check("--scenario", "no-such-scenario")
    assert unknown.returncode == 2
    assert "no scenario named 'no-such-scenario'" in unknown.stderr


def test_a_missing_snapshot_fails_until_update_creates_it(tmp_path: Path) -> None:
    expected = tmp_path / "expected"
    expected.mkdir()

    missing = _check("--expected", str(expected), "--scenario", "memory-setup")
    assert missing.returncode == 1
    assert missing.stdout.startswith("FAIL      memory-setup")
    assert "  snapshot: missing (" in missing.stdout.splitlines()[0]
    assert missing.stdout.splitlines()[-1].endswith(": 1 missing")
    assert not (expected / "memory-setup.yaml").exists()

    created = _check("--expected", str(expected), "--scenario", "memory-setup", "--update")
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith("created   memory-setup")
    assert created.stdout.splitlines()[-1].endswith(": 1 created")
    assert (expected / "memory-setup.yaml").read_bytes() == (
        REPO / "expected" / "memory-setup.yaml"
    ).read_bytes()


def test_update_rewrites_only_what_changed_and_leaves_no_temporary_files(
    expected_copy: Path,
) -> None:
    changed = expected_copy / "memory-setup.yaml"
    changed.write_text(changed.read_text().replace("memory_size: 0x40000,", "memory_size: 0x1,"))
    before = changed.read_bytes()
    (expected_copy / "retired-scenario.yaml").write_bytes(before)

    compared = _check("--expected", str(expected_copy), "--scenario", "memory-setup")
    assert compared.returncode == 1
    assert changed.read_bytes() == before  # never overwritten without --update

    updated = _check("--expected", str(expected_copy), "--update")
    assert updated.returncode == 0, updated.stderr
    verdicts = {line.split()[1]: line.split()[0] for line in updated.stdout.splitlines()[:6]}
    assert verdicts == {name: "updated" if name == "memory-setup" else "unchanged"
                        for name in SCENARIOS}  # fmt: skip
    assert f"unused: {expected_copy / 'retired-scenario.yaml'}" in updated.stdout
    assert changed.read_bytes() == (REPO / "expected" / "memory-setup.yaml").read_bytes()
    assert sorted(path.name for path in expected_copy.iterdir()) == sorted(
        [f"{name}.yaml" for name in SCENARIOS] + ["retired-scenario.yaml"]
    )


def test_a_deviation_from_the_qemu_reference_fails_and_is_named(tmp_path: Path) -> None:
    references = tmp_path / "qemu"
    shutil.copytree(shipped_references(), references)
    # Without the rules beside it, every deviation from QEMU's tiny-bios run is unexplained.
    (references / "tiny-bios.allowances.yaml").unlink()

    result = _check("--references", str(references), "--scenario", "tiny-bios")

    assert result.returncode == 1, result.stderr
    # One verdict per judgment: the scenario fails, its snapshot still matches, QEMU's fails.
    line = result.stdout.splitlines()[0]
    assert line.startswith("FAIL      tiny-bios") and "pass" not in line
    assert "  snapshot: equal  qemu tiny-bios: FAIL, " in line
    assert f"tiny-bios against {references / 'tiny-bios.yaml'}: FAIL" in result.stdout
    assert "KVM_SET_REGS: in.rdx: QEMU 0x" in result.stdout
    assert result.stdout.splitlines()[-1].endswith(": 1 failed")


def test_a_snapshot_from_another_host_passes_and_the_host_block_names_it(
    expected_copy: Path,
) -> None:
    intel = REPO / "tests" / "fixtures" / "hosts" / "intel-xeon" / "expected" / "tiny-bios.yaml"
    shutil.copy(intel, expected_copy / "tiny-bios.yaml")

    result = _check("--expected", str(expected_copy), "--scenario", "tiny-bios")

    assert result.returncode == 0, result.stdout
    assert "snapshot: equal (recorded on another host: see the host block)" in result.stdout
    assert "host: snapshot recorded on Intel(R) Xeon(R) Processor (59 CPUID entries), " in (
        result.stdout
    )
    json_result = _check("--expected", str(expected_copy), "--scenario", "tiny-bios",
                         "--format", "json")  # fmt: skip
    host = json.loads(json_result.stdout)["scenarios"][0]["host"]
    assert host["snapshot"][0].startswith("snapshot recorded on Intel(R) Xeon(R) Processor")


def test_cpuid_the_vmm_changed_on_the_same_host_is_a_regression(expected_copy: Path) -> None:
    snapshot = expected_copy / "tiny-bios.yaml"
    text = snapshot.read_text()
    # The VMM's policy, as the snapshot says: leaf 1's EAX its own, not the host's.
    set_cpuid2 = text.index("req: KVM_SET_CPUID2, in: {padding: 0x0, nent: host, entries: host}")
    policy = (
        "req: KVM_SET_CPUID2, in: {padding: 0x0, nent: 1, entries: [{function: 0x1, index: 0x0,"
        " flags: 0x0, eax: 0x830f10, ebx: host, ecx: host, edx: host, padding: [0x0, 0x0, 0x0]}]}}"
    )
    end = text.index("\n", set_cpuid2)
    snapshot.write_text(text[:set_cpuid2] + policy + text[end:])

    result = _check("--expected", str(expected_copy), "--scenario", "tiny-bios")

    assert result.returncode == 1
    assert "KVM_SET_CPUID2: in.entries[0x1/0x0].eax: expected 0x830f10, got " in result.stdout


def test_an_interrupted_update_writes_nothing_and_exits_128_plus_the_signal(
    tmp_path: Path,
) -> None:
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    process = subprocess.Popen(
        [sys.executable, "-m", "conformance", "check", "--update", "--expected", str(tmp_path)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    first = process.stdout.readline()  # one scenario judged (and staged), the next being traced
    assert first.startswith("created   memory-setup")
    process.send_signal(signal.SIGINT)
    _, error = process.communicate(timeout=120)
    assert process.returncode == 130, error
    assert "interrupted by SIGINT; no snapshot written" in error
    assert list(tmp_path.iterdir()) == []
