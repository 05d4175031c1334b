"""The plugin's snapshot workflow, driven by pytester as a VMM author's suite: beside syrupy and
pytest-regressions, node-id names and their clashes, unused snapshots, pytest-xdist, pending
snapshots and review, CI, and runs that did not finish."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.cli.main import main as cli_main

pytestmark = [pytest.mark.needs_kvm, pytest.mark.needs_ptrace]

MEMORY_SETUP = [sys.executable, "-m", "conformance", "run", "memory-setup"]
TINY_BIOS = [sys.executable, "-m", "conformance", "run", "tiny-bios"]


@pytest.fixture(autouse=True)
def not_on_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests write snapshots, which nothing does where CI is set (as .ci/run sets it)."""
    monkeypatch.delenv("CI", raising=False)


def _traced(name: str, *, matches: str = "") -> str:
    return (
        f"def {name}(kvm_conformance):\n"
        f"    kvm_conformance.trace({MEMORY_SETUP!r}).matches({matches})\n\n\n"
    )


def test_the_plugin_loads_beside_syrupy_and_pytest_regressions(pytester: pytest.Pytester) -> None:
    listed = pytester.runpytest("--help")
    assert listed.ret == pytest.ExitCode.OK
    help_text = listed.stdout.str()
    for option in ("--kvm-snapshot-update", "--kvm-snapshot-pending", "--snapshot-update"):
        assert option in help_text  # ours, and syrupy's own
    assert "--force-regen" in help_text  # pytest-regressions'
    pytester.makepyfile(
        test_three=_traced("test_ours")
        + "def test_syrupy(snapshot):\n    assert {'exit_status': 0} == snapshot\n\n\n"
        "def test_regressions(data_regression):\n    data_regression.check({'exit_status': 0})\n"
    )
    regression = pytester.path / "test_three" / "test_regressions.yml"
    regression.parent.mkdir()
    regression.write_text("exit_status: 0\n")

    written = pytester.runpytest("--kvm-snapshot-update", "--snapshot-update")
    written.assert_outcomes(passed=3)
    # Each plugin's summary, in the order pytest loaded the plugins (entry points: any order).
    written.stdout.fnmatch_lines(["*1 snapshot generated*"])
    written.stdout.fnmatch_lines(["1 created (test_three.test_ours)"])
    again = pytester.runpytest()
    again.assert_outcomes(passed=3)
    again.stdout.fnmatch_lines(["*1 snapshot passed*"])
    again.stdout.fnmatch_lines(["1 compared, 0 differing"])


def test_snapshot_names_default_to_the_node_id(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_names=f"""
import pytest


@pytest.mark.parametrize("guest", ["a", "b/c"])
def test_boot(kvm_conformance, guest):
    kvm_conformance.trace({MEMORY_SETUP!r}).matches()


class TestGroup:
    def test_inside(self, kvm_conformance):
        kvm_conformance.trace({MEMORY_SETUP!r}).matches()
        kvm_conformance.trace({MEMORY_SETUP!r}).matches()  # a second one: its own snapshot


def test_explicit(kvm_conformance):
    kvm_conformance.trace({MEMORY_SETUP!r}).matches("chosen-name")
"""
    )
    pytester.runpytest("--kvm-snapshot-update").assert_outcomes(passed=4)
    assert sorted(path.name for path in (pytester.path / "expected").iterdir()) == [
        "chosen-name.yaml",
        "test_names.TestGroup.test_inside-2.yaml",
        "test_names.TestGroup.test_inside.yaml",
        "test_names.test_boot[a].yaml",
        "test_names.test_boot[b_c].yaml",
    ]


def test_two_tests_claiming_one_name_fail_naming_both_and_neither_is_written(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_clash=_traced("test_one", matches="'dup'") + _traced("test_two", matches="'dup'")
    )
    result = pytester.runpytest("--kvm-snapshot-update")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*snapshot 'dup' is claimed by two tests: test_clash.py::test_one and "
            "test_clash.py::test_two*",
            "snapshot 'dup' claimed by test_clash.py::test_one and test_clash.py::test_two: "
            "not written",
        ]
    )
    assert not (pytester.path / "expected" / "dup.yaml").exists()


def test_unused_snapshots_only_when_every_test_ran_and_deleted_only_when_asked(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_a=_traced("test_a"), test_b=_traced("test_b"))
    pytester.runpytest("--kvm-snapshot-update").assert_outcomes(passed=2)
    expected = pytester.path / "expected"
    (expected / "retired.yaml").write_bytes((expected / "test_a.test_a.yaml").read_bytes())

    full = pytester.runpytest()
    full.stdout.fnmatch_lines(["1 unused (not deleted): retired.yaml"])
    for narrowed in (["-k", "test_a"], ["test_a.py"], ["test_b.py::test_b"], ["--lf"]):
        result = pytester.runpytest(*narrowed, "--kvm-snapshot-delete-unused")
        assert result.ret == pytest.ExitCode.OK, narrowed
        assert "unused (not deleted)" not in result.stdout.str(), narrowed
        assert "unused, deleted" not in result.stdout.str(), narrowed
        assert (expected / "retired.yaml").exists()
    deleted = pytester.runpytest("--kvm-snapshot-delete-unused")
    deleted.stdout.fnmatch_lines(["1 unused, deleted: retired.yaml"])
    assert sorted(path.name for path in expected.iterdir()) == [
        "test_a.test_a.yaml",
        "test_b.test_b.yaml",
    ]


def test_under_xdist_one_writer_and_the_same_summary(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_spread="import pytest\n\n\n@pytest.mark.parametrize('run', range(4))\n"
        f"def test_spread(kvm_conformance, run):\n"
        f"    kvm_conformance.trace({MEMORY_SETUP!r}).matches()\n"
    )
    serial = pytester.runpytest_subprocess("--kvm-snapshot-update")
    serial.assert_outcomes(passed=4)
    names = ", ".join(f"test_spread.test_spread[{run}]" for run in range(4))
    serial.stdout.fnmatch_lines([f"4 created ({names})"])
    for snapshot in (pytester.path / "expected").iterdir():
        snapshot.unlink()

    distributed = pytester.runpytest_subprocess("-n", "2", "--kvm-snapshot-update")
    distributed.assert_outcomes(passed=4)
    distributed.stdout.fnmatch_lines([f"4 created ({names})"])
    assert len(list((pytester.path / "expected").iterdir())) == 4  # no temporary files
    compared = pytester.runpytest_subprocess("-n", "2")
    compared.stdout.fnmatch_lines(["4 compared, 0 differing"])


def test_a_name_claimed_on_two_workers_is_a_failure_naming_both(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_first=_traced("test_one", matches="'dup'"),
        test_second=_traced("test_two", matches="'dup'"),
    )
    result = pytester.runpytest_subprocess("-n", "2", "--dist", "loadfile", "--kvm-snapshot-update")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        ["snapshot 'dup' claimed by test_*.py::test_* and test_*: not written"]
    )
    assert not (pytester.path / "expected" / "dup.yaml").exists()


def test_a_vmm_that_exits_otherwise_fails_and_is_never_written(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        f"def test_wrong(kvm_conformance):\n"
        f"    kvm_conformance.trace({TINY_BIOS!r}).matches()\n\n\n"
        f"def test_right(kvm_conformance):\n"
        f"    kvm_conformance.trace({TINY_BIOS!r}, exit_status=33).matches()\n"
    )
    result = pytester.runpytest("--kvm-snapshot-update")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([f"*{sys.executable}: the VMM exited with status 33, expected 0*"])
    written = sorted(path.name for path in (pytester.path / "expected").iterdir())
    assert written == ["test_a_vmm_that_exits_otherwise_fails_and_is_never_written.test_right.yaml"]
    assert "exit_status: 33" in (pytester.path / "expected" / written[0]).read_text()


def test_a_run_past_its_timeout_fails_and_is_never_written(pytester: pytest.Pytester) -> None:
    spinning = [
        sys.executable,
        "-c",
        "import os, time; os.open('/dev/kvm', os.O_RDWR); time.sleep(60)",
    ]
    pytester.makepyfile(
        f"def test_slow(kvm_conformance):\n"
        f"    kvm_conformance.trace({spinning!r}, timeout=0.5).matches()\n"
    )
    result = pytester.runpytest("--kvm-snapshot-update", "--durations=1")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*still running after its timeout of 0.5 s; stopped*"])
    assert not (pytester.path / "expected").exists()


def test_nothing_is_written_on_ci_unless_forced(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    pytester.makepyfile(_traced("test_boot"))
    refused = pytester.runpytest("--kvm-snapshot-update")
    refused.assert_outcomes(failed=1)
    refused.stdout.fnmatch_lines(["CI is set: --kvm-snapshot-update writes nothing on CI*"])
    assert not (pytester.path / "expected").exists()
    forced = pytester.runpytest("--kvm-snapshot-update", "--kvm-snapshot-force")
    forced.assert_outcomes(passed=1)
    assert (pytester.path / "expected").is_dir()


def test_pending_snapshots_are_written_beside_and_review_accepts_them(
    pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    pytester.makepyfile(test_new=_traced("test_boot"))
    pending = pytester.runpytest("--kvm-snapshot-pending")
    pending.assert_outcomes(failed=1)
    pending.stdout.fnmatch_lines(["*(pending: test_new.test_boot.yaml.new*", "1 pending *"])
    expected = pytester.path / "expected"
    assert [path.name for path in expected.iterdir()] == ["test_new.test_boot.yaml.new"]

    assert cli_main(["review", "--snapshots", str(expected), "--accept-all"]) == 0
    assert "test_new.test_boot: accepted" in capsys.readouterr().out
    assert [path.name for path in expected.iterdir()] == ["test_new.test_boot.yaml"]
    pytester.runpytest().assert_outcomes(passed=1)
    assert cli_main(["review", "--snapshots", str(expected)]) == 0
    assert "no pending snapshots" in capsys.readouterr().out


def test_review_refuses_to_guess_without_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a.yaml.new").write_text("schema: kvm-conformance/2\nsource: {}\nthreads: {}\n")
    assert cli_main(["review", "--snapshots", str(tmp_path)]) == 2
    assert "use --accept-all or --reject-all" in capsys.readouterr().err
    assert cli_main(["review", "--snapshots", str(tmp_path), "--reject-all"]) == 0
    assert list(tmp_path.iterdir()) == []


def test_review_asks_on_a_terminal_and_does_what_it_is_told(tmp_path: Path) -> None:
    """accept one, reject one, skip one, through a pseudo-terminal as a person would."""
    source = (
        "schema: kvm-conformance/2\nsource: {}\nthreads:\n  main:\n  - {call: open, ret: kvm}\n"
    )
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.yaml.new").write_text(source)
    (tmp_path / "b.yaml").write_text(source.replace("ret: kvm", "ret: kvm2"))
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "conformance", "review", "--snapshots", str(tmp_path)],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env={key: value for key, value in os.environ.items() if key != "CI"},
    )
    os.close(terminal)
    shown = b""
    for answer in (b"a\n", b"r\n", b"s\n"):
        while not shown.rstrip().endswith(b"[s]kip?"):
            readable, _, _ = select.select([controller], [], [], 60)
            assert readable, f"no question after {shown!r}"
            shown += os.read(controller, 4096)
        os.write(controller, answer)
        shown = b""
    process.wait(timeout=60)
    os.close(controller)
    assert process.returncode == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.yaml", "b.yaml", "c.yaml.new"]
    assert "kvm2" in (tmp_path / "b.yaml").read_text()  # rejected: the snapshot stays
