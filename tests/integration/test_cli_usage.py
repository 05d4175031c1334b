"""The command lines as a new user meets them: --version, help pages with descriptions and
examples, options before or after positional arguments, one exit status per class of error,
and never a traceback, whatever the input (bad pids, missing files, wrong kinds of file, bad
options)."""

from __future__ import annotations

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conformance.cli.arguments import EXIT_FAILED, EXIT_NOT_STARTED, EXIT_USAGE

REPO = Path(__file__).resolve().parents[2]
MEMORY_1G = str(REPO / "conformance" / "qemu" / "references" / "memory-1g.yaml")
ALLOWANCES = str(REPO / "conformance" / "qemu" / "references" / "memory-1g.allowances.yaml")
SUBCOMMANDS = ["abi", "scenarios", "run", "trace", "check", "lint", "diff"]
RECORD_SOURCES = ["qemu", "vmm", "strace-log"]


def _run(program: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    module = "conformance" if program == "kvm-conformance" else "conformance.cli.record_trace"
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        check=False,
    )


@pytest.mark.parametrize("program", ["kvm-conformance", "record-trace"])
def test_version(program: str) -> None:
    result = _run(program, "--version")
    assert result.returncode == 0
    assert re.fullmatch(rf"{program} \d+\.\d+\.\d+\S*\n", result.stdout), result.stdout


@pytest.mark.parametrize(
    ("program", "command"),
    [("kvm-conformance", name) for name in SUBCOMMANDS]
    + [("record-trace", name) for name in RECORD_SOURCES],
)
def test_every_command_has_a_description_examples_and_option_help(
    program: str, command: str
) -> None:
    result = _run(program, command, "--help")
    assert result.returncode == 0, result.stderr
    page = result.stdout
    usage, description = page.split("\n\n")[:2]
    assert usage.startswith(f"usage: {program if program != 'record-trace' else 'record-trace'}")
    assert len(description.split()) >= 8, page  # a sentence, not a title
    examples = page.split("examples:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert examples and all(line.strip().startswith(program) for line in examples)
    assert "exit status:" in page
    options = re.findall(r"^  (-\S+(?:, --\S+)?)(.*)$", page.split("options:", 1)[1], re.M)
    for flag, rest in options:
        if flag != "-h, --help":
            # The help of each option: on its line, or on the next when the flag is long.
            assert rest.strip() or page.split(flag, 1)[1].splitlines()[1].strip(), flag


def test_the_command_list_names_every_command() -> None:
    page = _run("kvm-conformance", "--help").stdout
    for name in SUBCOMMANDS:
        assert re.search(rf"^    {name}\s+\S", page, re.M), name
    assert "examples:" in page and "exit status:" in page


def test_options_after_positional_arguments(tmp_path: Path) -> None:
    """`lint mine.yaml --format sarif` exactly as the README writes it, and the same the
    other way round; `diff A B --full` and `diff --full A B`."""
    after = _run("kvm-conformance", "lint", MEMORY_1G, "--format", "sarif")
    before = _run("kvm-conformance", "lint", "--format", "sarif", MEMORY_1G)
    assert after.returncode == before.returncode == 0, after.stderr
    assert after.stdout == before.stdout and '"version": "2.1.0"' in after.stdout
    one = _run("kvm-conformance", "diff", MEMORY_1G, MEMORY_1G, "-v")
    other = _run("kvm-conformance", "diff", "-v", MEMORY_1G, MEMORY_1G)
    assert one.returncode == other.returncode == 0 and one.stdout == other.stdout


def _bad_inputs(tmp_path: Path) -> list[tuple[list[str], int, str]]:
    binary = tmp_path / "binary.dat"
    binary.write_bytes(b"\x00\x01\x02 not text")
    page = tmp_path / "page.html"
    page.write_text("<html><body>a report</body></html>\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text("schema: kvm-conformance/2\nsource: {}\nthreads:\n  main:\n  - {call: [\n")
    missing = str(tmp_path / "missing.yaml")
    return [
        (["kvm-conformance", "abi", "--bogus"], EXIT_USAGE, "unrecognized arguments: --bogus"),
        (["kvm-conformance", "nope"], EXIT_USAGE, "invalid choice: 'nope'"),
        (["kvm-conformance", "run", "nope"], EXIT_USAGE, "no scenario named 'nope'"),
        (["kvm-conformance", "run"], EXIT_USAGE, "the following arguments are required"),
        (["kvm-conformance", "trace"], EXIT_USAGE, "give a command to trace (after `--`)"),
        (["kvm-conformance", "trace", "-p", "999999"], EXIT_USAGE, "no process with pid 999999"),
        (["kvm-conformance", "trace", "-p", "abc"], EXIT_USAGE, "invalid int value: 'abc'"),
        (["kvm-conformance", "trace", "-p", "1", "--", "true"], EXIT_USAGE, "not both"),
        (["kvm-conformance", "trace", "-e", "x=y", "--", "true"], EXIT_USAGE, "expected trace="),
        (["kvm-conformance", "trace", "-e", "ioctl=KVM_NO", "--", "true"], EXIT_USAGE,
         "no KVM ioctl named KVM_NO"),
        (["kvm-conformance", "trace", "-s", "0", "--", "true"], EXIT_USAGE, "must be at least 1"),
        (["kvm-conformance", "trace", "-o", str(tmp_path / "no" / "t"), "--", "true"],
         EXIT_USAGE, "cannot write"),
        (["kvm-conformance", "trace", "--", str(tmp_path / "no-vmm")], EXIT_NOT_STARTED,
         "not found or not executable"),
        (["kvm-conformance", "lint"], EXIT_USAGE, "give a TRACE.yaml"),
        (["kvm-conformance", "lint", missing], EXIT_USAGE, "missing.yaml: cannot read"),
        (["kvm-conformance", "lint", str(tmp_path)], EXIT_USAGE, "is a directory"),
        (["kvm-conformance", "lint", str(binary)], EXIT_USAGE, "not a trace document"),
        (["kvm-conformance", "lint", str(page)], EXIT_USAGE, "not a trace document"),
        (["kvm-conformance", "lint", ALLOWANCES], EXIT_USAGE, "not a trace document"),
        (["kvm-conformance", "lint", str(broken)], EXIT_USAGE, "broken.yaml:6: malformed YAML"),
        (["kvm-conformance", "lint", "--config", missing, MEMORY_1G], EXIT_USAGE, "cannot read"),
        (["kvm-conformance", "lint", MEMORY_1G, "--", "true"], EXIT_USAGE, "not both"),
        (["kvm-conformance", "diff", missing, MEMORY_1G], EXIT_USAGE, "cannot read"),
        (["kvm-conformance", "diff", MEMORY_1G], EXIT_USAGE, "arguments are required"),
        (["kvm-conformance", "diff", MEMORY_1G, str(page)], EXIT_USAGE, "not a trace document"),
        (["kvm-conformance", "diff", MEMORY_1G, MEMORY_1G, "--allowances", str(page)],
         EXIT_USAGE, "expected a mapping with `allow:`"),
        (["kvm-conformance", "diff", MEMORY_1G, MEMORY_1G, "--html", str(tmp_path / "n" / "r")],
         EXIT_USAGE, "cannot write"),
        (["kvm-conformance", "diff", MEMORY_1G, MEMORY_1G, "--", "x"], EXIT_USAGE,
         "takes no command after `--`"),
        (["kvm-conformance", "check", "--scenario", "nope"], EXIT_USAGE, "no scenario named"),
        (["kvm-conformance", "check", "--format", "xml"], EXIT_USAGE, "invalid choice: 'xml'"),
        (["record-trace", "qemu", "nope"], EXIT_USAGE, "no QEMU scenario named 'nope'"),
        (["record-trace", "vmm"], EXIT_USAGE, "give the VMM's command after `--`"),
        (["record-trace", "strace-log", missing], EXIT_USAGE, "cannot read"),
        (["record-trace", "strace-log", str(page)], EXIT_USAGE, "page.html:1: not a system call"),
        (["record-trace", "vmm", "-o", MEMORY_1G, "--", "true"], EXIT_USAGE,
         "exists; give --force"),
    ]  # fmt: skip


@pytest.mark.needs_ptrace
def test_bad_input_is_one_line_and_its_class_exit_status_never_a_traceback(
    tmp_path: Path,
) -> None:
    cases = _bad_inputs(tmp_path)
    with ThreadPoolExecutor(max_workers=4) as pool:  # each is a process start: overlap them
        results = list(pool.map(lambda case: _run(*case[0]), cases))
    for ((program, *args), status, message), result in zip(cases, results, strict=True):
        shown = f"{program} {' '.join(args)}: {result.returncode} {result.stderr!r}"
        assert result.returncode == status, shown
        assert "Traceback" not in result.stderr and "Warning" not in result.stderr, shown
        assert message in result.stderr, shown
        errors = [line for line in result.stderr.splitlines() if not line.startswith(" ")]
        assert len(errors) <= 2, shown  # argparse: usage + error; ours: one line


def test_a_judgment_that_fails_is_exit_1(tmp_path: Path) -> None:
    subject = tmp_path / "subject.yaml"
    subject.write_text(
        Path(MEMORY_1G).read_text().replace("memory_size: 0x40000000,", "memory_size: 0x1000,", 1)
    )
    result = _run("kvm-conformance", "diff", str(subject), MEMORY_1G)
    assert result.returncode == EXIT_FAILED, result.stdout + result.stderr
