"""The pytest plugin, run as a VMM author runs it: a test file using `kvm_conformance`, driven by
pytester, tracing the VMM core's memory-setup scenario for real.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.needs_kvm, pytest.mark.needs_ptrace]


@pytest.fixture(autouse=True)
def not_on_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests write snapshots, which nothing does where CI is set (as .ci/run sets it)."""
    monkeypatch.delenv("CI", raising=False)


CHECK_MEMORY_SETUP = """
def test_memory_setup(kvm_conformance):
    kvm_conformance.matches_scenario("memory-setup")
"""


def _expected_with_moved_slot(directory: Path) -> None:
    """The committed memory-setup snapshot with slot 0 moved from gpa 0x0 to 0x1000."""
    directory.mkdir(exist_ok=True)
    text = (REPO / "expected" / "memory-setup.yaml").read_text()
    moved = text.replace("guest_phys_addr: 0x0,", "guest_phys_addr: 0x1000,")
    assert moved != text
    (directory / "memory-setup.yaml").write_text(moved)


def test_a_missing_snapshot_fails_then_update_creates_it_and_the_next_run_passes(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(CHECK_MEMORY_SETUP)

    missing = pytester.runpytest()
    missing.assert_outcomes(failed=1)
    missing.stdout.fnmatch_lines(["*no snapshot *expected/memory-setup.yaml; run pytest with "
                                  "--kvm-snapshot-update to create it*"])  # fmt: skip
    assert not (pytester.path / "expected" / "memory-setup.yaml").exists()

    created = pytester.runpytest("--kvm-snapshot-update")
    created.assert_outcomes(passed=1)
    created.stdout.fnmatch_lines(["*kvm-conformance snapshots*", "1 created (memory-setup)"])
    written = (pytester.path / "expected" / "memory-setup.yaml").read_text()
    assert written.startswith("schema: kvm-conformance/2\n")
    assert "scenario: memory-setup" in written

    again = pytester.runpytest()
    again.assert_outcomes(passed=1)
    again.stdout.fnmatch_lines(["1 compared, 0 differing"])


def test_a_differing_snapshot_fails_with_the_readable_diff(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(CHECK_MEMORY_SETUP)
    _expected_with_moved_slot(pytester.path / "expected")

    result = pytester.runpytest()

    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "memory-setup: 1 difference from *expected/memory-setup.yaml",
            "thread main, call #4 KVM_SET_USER_MEMORY_REGION: in.guest_phys_addr: "
            "expected 0x1000, got 0x0",
            "*- #4 *KVM_SET_USER_MEMORY_REGION(vm, slot: 0)  in.guest_phys_addr: ?-0x1000-?",
            "*+ #4 *KVM_SET_USER_MEMORY_REGION(vm, slot: 0)  in.guest_phys_addr: {+0x0+}",
            "to accept: pytest --kvm-snapshot-update",
        ]
    )
    output = result.stdout.str()
    assert "AssertionError" not in output and "Traceback" not in output
    assert "During handling" not in output
    assert "{'call'" not in output  # no dump of Python dicts
    assert "\033[" not in output  # no colour when not on a terminal


def test_a_malformed_snapshot_fails_naming_its_file_and_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(CHECK_MEMORY_SETUP)
    expected = pytester.path / "expected"
    expected.mkdir()
    (expected / "memory-setup.yaml").write_text(
        "schema: kvm-conformance/2\nsource: {}\nthreads: [\n"
    )

    result = pytester.runpytest()

    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*expected/memory-setup.yaml:4: malformed YAML: *"])
    assert "Traceback" not in result.stdout.str()


def test_snapshot_update_rewrites_a_differing_snapshot(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(CHECK_MEMORY_SETUP)
    _expected_with_moved_slot(pytester.path / "expected")

    updated = pytester.runpytest("--kvm-snapshot-update")

    updated.assert_outcomes(passed=1)
    updated.stdout.fnmatch_lines(["1 updated (memory-setup)"])
    assert pytester.runpytest().ret == pytest.ExitCode.OK
    assert sorted(p.name for p in (pytester.path / "expected").iterdir()) == ["memory-setup.yaml"]


def test_any_command_traced_into_a_snapshot_directory_from_the_ini_file(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini("[pytest]\nkvm_conformance_snapshots = traces/ours\n")
    pytester.makepyfile(
        f"""
        def test_my_vmm(kvm_conformance):
            traced = kvm_conformance.trace(
                [{sys.executable!r}, "-m", "conformance", "run", "memory-setup"]
            )
            assert traced.exit_status == 0
            traced.matches("my-vmm-boot")
        """
    )

    assert pytester.runpytest("--kvm-snapshot-update").ret == pytest.ExitCode.OK
    snapshot = (pytester.path / "traces" / "ours" / "my-vmm-boot.yaml").read_text()
    assert "tool: kvm-conformance pytest" in snapshot
    assert "KVM_SET_USER_MEMORY_REGION" in snapshot
    pytester.runpytest().assert_outcomes(passed=1)


def test_a_command_that_never_opens_kvm_fails_the_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_not_a_vmm(kvm_conformance):
            kvm_conformance.trace(["true"])
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*true ended with status 0 without opening /dev/kvm*"])


def test_unused_snapshots_are_reported_and_kept_unless_the_run_was_narrowed(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(CHECK_MEMORY_SETUP + "\n\ndef test_other():\n    pass\n")
    expected = pytester.path / "expected"
    expected.mkdir()
    shutil.copy(REPO / "expected" / "memory-setup.yaml", expected)
    # A snapshot a test's trace wrote, and one of a scenario (check's to report, not pytest's).
    snapshot = (REPO / "expected" / "memory-setup.yaml").read_text()
    pytest_written = snapshot.replace(
        "tool: kvm-conformance vmm core", "tool: kvm-conformance pytest"
    )
    (expected / "retired-test.yaml").write_text(pytest_written)
    (expected / "retired-scenario.yaml").write_text(snapshot)

    full = pytester.runpytest()
    full.assert_outcomes(passed=2)
    full.stdout.fnmatch_lines(["1 unused (not deleted): retired-test.yaml"])
    assert (expected / "retired-test.yaml").exists()

    narrowed = pytester.runpytest("-k", "memory_setup")
    narrowed.assert_outcomes(passed=1)
    assert "(not deleted)" not in narrowed.stdout.str()


def test_a_missing_resource_skips_with_its_reason(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.needs_qemu
        def test_needs_qemu():
            pass

        @pytest.mark.needs_kvm
        def test_needs_kvm():
            pass
        """
    )
    # A fresh process whose PATH has no QEMU: the checks are cached per process.
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    result = pytester.runpytest_subprocess("-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(
        ["SKIPPED * qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"]
    )


def test_the_markers_are_registered_for_strict_markers(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.needs_kvm
        @pytest.mark.needs_ptrace
        @pytest.mark.needs_qemu
        @pytest.mark.needs_gcc
        def test_marked():
            pass
        """
    )
    listed = pytester.runpytest("--markers")
    listed.stdout.fnmatch_lines(["@pytest.mark.needs_kvm: needs a usable /dev/kvm*"])
    # Every resource is present on the machines that run this suite: the test runs.
    pytester.runpytest("--strict-markers").assert_outcomes(passed=1)


VARIANTS = REPO / "tests" / "fixtures" / "vmm_variants" / "variants.py"
LINT_VARIANT = f"""
import sys

def test_usage(kvm_conformance):
    traced = kvm_conformance.trace([sys.executable, {str(VARIANTS)!r}, "KVMC003", KIND])
    findings = kvm_conformance.lint(traced)
    assert [finding.rule_id for finding in findings if finding.rule_id == "KVMC003"] == []
"""


def test_lint_fails_a_vmm_that_assigns_an_irqfd_before_routing_its_gsi(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(LINT_VARIANT.replace("KIND", '"wrong"'))
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*main[[]11] KVM_IRQFD: error KVMC003: *", "*: 1 error, *"])
    result.stdout.no_fnmatch_line("*Traceback*")


def test_lint_passes_the_correct_variant(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(LINT_VARIANT.replace("KIND", '"right"'))
    pytester.runpytest().assert_outcomes(passed=1)


def test_lint_honours_the_projects_disabled_rules(pytester: pytest.Pytester) -> None:
    # The wrong variant, with its rule disabled: no error, and no KVMC003 finding returned.
    pytester.makepyfile(LINT_VARIANT.replace("KIND", '"wrong"'))
    pytester.makefile(
        ".toml",
        pyproject="[tool.kvm-conformance]\n"
        'disable = [{id = "KVMC003", reason = "this VMM routes GSIs elsewhere"}]\n',
    )
    pytester.runpytest().assert_outcomes(passed=1)
