"""Acceptance of issue 15: kvm-conformance as the CI gate of a VMM of one's own.

A project of its own in a temporary directory (its own pyproject.toml, a small C VMM, tests
using the plugin beside syrupy and pytest-regressions), with kvm-conformance installed there
non-editable from a wheel of this tree, built once per session (`pip wheel --no-build-isolation`:
no network). The project's virtual environment has only our wheel installed; the libraries it
needs (PyYAML, python-ptrace, pytest and the other plugins) come from the suite's own
environment through a .pth path line, which adds them to sys.path without running that
environment's editable-install hook, so `import conformance` finds the wheel's copy.

Every command runs as a user types it, in the project's root, with CI unset; the transcript is
printed (`pytest -s` shows it).
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VMM_SOURCE = REPO / "tests" / "fixtures" / "own_vmm" / "vmm.c"

pytestmark = [pytest.mark.needs_kvm, pytest.mark.needs_ptrace, pytest.mark.needs_gcc]

PROJECT_TESTS = """\
import pytest


def test_boot(kvm_conformance):
    kvm_conformance.matches_scenario("boot")


@pytest.mark.parametrize("run", range(RUNS))
def test_traced(kvm_conformance, run):
    kvm_conformance.trace(["./build/vmm"]).matches()


def test_syrupy_beside(snapshot):
    assert {"exit_status": 0} == snapshot


def test_regressions_beside(data_regression):
    data_regression.check({"exit_status": 0})
"""


@dataclass
class Project:
    root: Path
    env: dict[str, str]
    transcript: list[str]

    def run(self, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        result = subprocess.run(
            argv,
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        seconds = time.monotonic() - started
        shown = "\n".join(
            part.rstrip("\n") for part in (result.stdout, result.stderr) if part.strip()
        )
        entry = f"$ {' '.join(argv)}\n{shown}\n[exit {result.returncode}, {seconds:.1f} s]"
        self.transcript.append(entry)
        print(entry, flush=True)
        return result

    def build(self, *defines: str) -> None:
        """Compile the VMM, with one of its realistic changes (-D...) or none."""
        subprocess.run(
            ["gcc", "-O2", "-Wall", "-Werror", *defines, "-o", "build/vmm", str(VMM_SOURCE)],
            cwd=self.root,
            check=True,
        )
        self.transcript.append(f"$ gcc {' '.join(defines)} -o build/vmm vmm.c")

    def snapshots(self) -> dict[str, bytes]:
        directory = self.root / "expected"
        return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This tree as a wheel, built once: from a copy of the files git knows of (tracked, or new
    and not ignored), so that nothing of the checkout's own builds goes in."""
    source = tmp_path_factory.mktemp("source")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    output = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"),
            *("--no-build-isolation", "--disable-pip-version-check", "-w", str(output)),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    [built] = output.glob("kvm_conformance-*.whl")
    return built


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Iterator[Project]:
    root = tmp_path_factory.mktemp("my-vmm")
    venv = root / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet"),
            *("--no-deps", "--no-index", "--disable-pip-version-check", str(wheel)),
        ],
        check=True,
        capture_output=True,
    )
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "suite_libraries.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {key: value for key, value in os.environ.items() if key not in ("CI", "PYTHONPATH")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["NO_COLOR"] = "1"
    env["PYTHONUNBUFFERED"] = "1"  # "collected N items" arrives when printed
    (root / "build").mkdir()
    (root / "tests").mkdir()
    (root / "pyproject.toml").write_text('[project]\nname = "my-vmm"\nversion = "0.1"\n')
    (root / "tests" / "test_vmm.py").write_text(PROJECT_TESTS.replace("RUNS", "4"))
    regression = root / "tests" / "test_vmm" / "test_regressions_beside.yml"
    regression.parent.mkdir()
    regression.write_text("exit_status: 0\n")
    chosen = Project(root, env, [])
    chosen.build()
    installed = chosen.run("python", "-c", "import conformance; print(conformance.__file__)")
    assert installed.stdout.startswith(site), "the wheel's copy, not this checkout's"
    yield chosen


def test_the_gate_of_a_vmm_of_its_own(project: Project) -> None:
    started = time.monotonic()
    written = project.run("kvm-conformance", "init", "--name", "boot", "--", "./build/vmm")
    assert written.returncode == 0, written.stderr
    assert "[tool.kvm-conformance.scenarios.boot]" in (project.root / "pyproject.toml").read_text()

    missing = project.run("kvm-conformance", "check")
    assert missing.returncode == 1
    assert "expected/boot.yaml; `kvm-conformance check --update` creates it" in missing.stdout

    created = project.run("kvm-conformance", "check", "--update")
    assert created.returncode == 0, created.stdout + created.stderr
    assert created.stdout.startswith("created   boot")
    assert list(project.snapshots()) == ["boot.yaml"]  # the project's only, no built-in one

    passed = project.run("kvm-conformance", "check")
    assert passed.returncode == 0 and passed.stdout.startswith("pass      boot")

    before = project.snapshots()
    changes = {
        "-DVCPU_FIRST": "thread main, call #4 KVM_CREATE_VCPU: moved: expected as #5, after "
        "KVM_SET_USER_MEMORY_REGION",
        "-DSLOT_SIZE=0x20000": "thread main, call #4 KVM_SET_USER_MEMORY_REGION: "
        "in.memory_size: expected 0x10000, got 0x20000",
        "-DINITIAL_RDX=0x2a": "thread main, call #10 KVM_SET_REGS: in.rdx: expected 0x0, got 0x2a",
    }
    for define, named in changes.items():
        project.build(define)
        failed = project.run("kvm-conformance", "check", "--pending")
        assert failed.returncode == 1
        assert named in failed.stdout
        assert "(pending: boot.yaml.new)" in failed.stdout
        assert project.snapshots()["boot.yaml"] == before["boot.yaml"]

    accepted = project.run("kvm-conformance", "review", "--accept-all")
    assert accepted.returncode == 0 and "1 accepted" in accepted.stdout
    assert list(project.snapshots()) == ["boot.yaml"]
    assert project.run("kvm-conformance", "check").returncode == 0  # the register change, now

    alongside = project.run("python", "-m", "pytest", "-p", "no:cacheprovider")
    assert alongside.returncode == 1  # the traced tests' snapshots do not exist yet
    assert "no snapshot" in alongside.stdout and "--kvm-snapshot-update to create it" in (
        alongside.stdout
    )
    updated = project.run(
        "python", "-m", "pytest", "-p", "no:cacheprovider", "--kvm-snapshot-update",
        "--snapshot-update",
    )  # fmt: skip
    assert updated.returncode == 0, updated.stdout
    names = [f"tests.test_vmm.test_traced[{run}]" for run in range(4)]
    assert f"4 created ({', '.join(names)}), 1 unchanged" in updated.stdout
    compared = project.run("python", "-m", "pytest", "-p", "no:cacheprovider")
    assert compared.returncode == 0, compared.stdout
    assert "5 compared, 0 differing" in compared.stdout
    assert "1 snapshot passed." in compared.stdout  # syrupy's own summary, beside ours

    project.build()  # back to the original VMM: every trace snapshot differs in rdx
    distributed = project.run(
        "python", "-m", "pytest", "-p", "no:cacheprovider", "-n", "2", "--kvm-snapshot-update"
    )
    assert distributed.returncode == 0, distributed.stdout
    assert f"5 updated (boot, {', '.join(names)})" in distributed.stdout
    assert "boot.yaml" in project.snapshots() and not _leftovers(project.root / "expected")
    again = project.run("python", "-m", "pytest", "-p", "no:cacheprovider", "-n", "2")
    assert again.returncode == 0 and "5 compared, 0 differing" in again.stdout

    against_qemu = project.run("kvm-conformance", "diff", "expected/boot.yaml", "memory-1g")
    assert against_qemu.returncode == 1
    assert "boot against " in against_qemu.stdout
    assert "KVM_SET_USER_MEMORY_REGION: in.memory_size: QEMU 0x40000000, subject 0x10000" in (
        against_qemu.stdout
    )
    print(f"end-to-end: {time.monotonic() - started:.1f} s", flush=True)


def test_a_vmm_that_fails_is_never_written(project: Project) -> None:
    (project.root / "kvm-conformance.toml").write_text(
        '[scenarios.broken]\ncommand = ["./build/vmm", "--fail"]\n'
    )
    try:
        result = project.run("kvm-conformance", "check", "--update")
        assert result.returncode == 1
        assert result.stdout.startswith("FAIL      broken")
        assert "snapshot: not compared, not written: the VMM did not run" in result.stdout
        assert "scenario broken: the VMM exited with status 1, expected 0" in result.stdout
        assert "vmm: mmap: Invalid argument" in result.stdout
        assert "broken.yaml" not in project.snapshots()
    finally:
        (project.root / "kvm-conformance.toml").unlink()


def test_ctrl_c_during_a_snapshot_update_changes_nothing(project: Project) -> None:
    """20 runs of `pytest --kvm-snapshot-update`, each sent SIGINT (to its process group, as a
    terminal's Ctrl-C is) at a random point of its run: after a random number of its twelve
    tests (none to ten), a random part of one test's time later, inside a trace or between
    two. Each exits 2, as pytest's interrupted runs do, leaves every snapshot as it was and no
    temporary file, and no traced VMM behind."""
    tests = project.root / "tests" / "test_many.py"
    tests.write_text(
        "import pytest\n\n@pytest.mark.parametrize('run', range(TESTS))\n"
        "def test_many(kvm_conformance, run):\n"
        "    kvm_conformance.trace(['./build/vmm']).matches()\n".replace("TESTS", str(_TESTS))
    )
    try:
        project.build()
        assert project.run(*_pytest_many(), "--kvm-snapshot-update").returncode == 0
        project.build("-DINITIAL_RDX=0x7")  # an update would now rewrite all twelve
        before = project.snapshots()
        per_test = _seconds_per_test(project)
        seed = int(os.environ.get("KVM_CONFORMANCE_INTERRUPT_SEED", time.time_ns() % 10_000))
        chance = random.Random(seed)
        outcomes = []
        for _ in range(20):
            # At most ten tests done: the interrupt comes before the last one ends.
            after_tests, delay = chance.randrange(_TESTS - 1), chance.uniform(0.0, per_test)
            status = _interrupted_run(project, after_tests, delay)
            outcomes.append((after_tests, round(delay, 3), status))
            assert project.snapshots() == before, f"seed {seed}: {outcomes}"
            assert not _leftovers(project.root / "expected"), f"seed {seed}: {outcomes}"
        assert all(status == pytest.ExitCode.INTERRUPTED for *_, status in outcomes), (
            f"seed {seed}: {outcomes}"
        )
        print(f"interrupts (seed {seed}, {per_test:.3f} s a test): {outcomes}", flush=True)
        # Without the update flag, an interrupted comparing run is pytest's "interrupted" too.
        comparing = [_interrupted_run(project, after, 0.0, update=False) for after in (0, 5, 10)]
        assert comparing == [pytest.ExitCode.INTERRUPTED] * 3
        assert project.snapshots() == before
        assert not _vmms_left(project.root)
    finally:
        tests.unlink()


_TESTS = 12


def _pytest_many() -> list[str]:
    return ["python", "-m", "pytest", "-p", "no:cacheprovider", "-v", "tests/test_many.py"]


def _seconds_per_test(project: Project) -> float:
    """The shortest time between two tests' results in a comparing run of the same tests
    (which writes nothing): a delay under it after test k lands before test k + 2 ends."""
    with _started(project, update=False) as (process, results):
        times = [time.monotonic() for _ in results]
        process.wait(timeout=300)
    return min(later - earlier for earlier, later in itertools.pairwise(times))


def _interrupted_run(project: Project, after_tests: int, delay: float, update: bool = True) -> int:
    with _started(project, update=update) as (process, results):
        for _ in range(after_tests):
            next(results)
        time.sleep(delay)
        os.killpg(process.pid, signal.SIGINT)
        return process.wait(timeout=120)


class _started:
    """pytest on the many-traces file in a session of its own, once it has collected its
    tests, with an iterator that yields as each test's result line comes."""

    def __init__(self, project: Project, *, update: bool) -> None:
        self._project = project
        self._update = update
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> tuple[subprocess.Popen[str], Iterator[str]]:
        argv = [*_pytest_many(), *(["--kvm-snapshot-update"] if self._update else [])]
        self._process = subprocess.Popen(
            argv,
            cwd=self._project.root,
            env=self._project.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        assert self._process.stdout is not None
        lines = iter(self._process.stdout)
        for line in lines:
            if "collected" in line:
                break
        results = (line for line in lines if "::test_many[" in line and "%]" in line)
        return self._process, results

    def __exit__(self, *exc: object) -> None:
        assert self._process is not None
        if self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)
        self._process.communicate()


def _leftovers(directory: Path) -> list[str]:
    return sorted(
        path.name
        for path in directory.iterdir()
        if path.name.startswith(".") or path.name.endswith((".tmp", ".new"))
    )


def _vmms_left(root: Path) -> list[int]:
    vmm = str(root / "build" / "vmm")
    left = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "exe") == vmm:
                    left.append(int(entry.name))
            except OSError:
                continue
    return left
