"""The `kvm-conformance` command line, run as a user runs it: a subprocess, real /dev/kvm."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from conformance.abi import _generated
from conformance.model.scenarios import SCENARIOS


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "conformance", *args],
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def _header_ioctl_macros() -> set[str]:
    """Every KVM_* macro of linux/kvm.h that expands to an _IO* request, read with gcc."""
    macros = subprocess.run(
        ["gcc", "-dM", "-E", "-include", "linux/kvm.h", "-"],
        input=b"",
        capture_output=True,
        check=True,
    ).stdout.decode()
    return set(re.findall(r"^#define (KVM_\w+) _IO(?:R|W|WR)?\(KVMIO\b", macros, re.MULTILINE))


@pytest.mark.needs_gcc
def test_abi_prints_one_line_per_ioctl_of_the_header() -> None:
    result = _cli("abi")
    assert result.returncode == 0
    lines = result.stdout.decode().splitlines()
    names = {line.split()[0] for line in lines}
    assert len(names) == len(lines)
    # Macros naming a struct only another architecture defines have no number on x86-64.
    assert names == _header_ioctl_macros() - set(_generated.UNAVAILABLE_IOCTLS)
    for line in lines:
        name, number, direction, fd_kinds, arg_type = line.split()
        assert int(number, 16) == _generated.IOCTL_NUMBERS[name]
        assert direction in {"NONE", "READ", "WRITE", "READ_WRITE"}
        assert fd_kinds and arg_type


def test_scenarios_lists_every_scenario() -> None:
    result = _cli("scenarios")
    assert result.returncode == 0
    listed = [line.split()[0] for line in result.stdout.decode().splitlines()]
    assert listed == sorted(
        ["memory-setup", "qemu-memory-layout", "hello", "hello-long", "tiny-bios", "exits-100k"]
    )


def test_scenarios_lists_the_projects_scenarios_before_the_built_in_ones(tmp_path: Path) -> None:
    config = tmp_path / "kvm-conformance.toml"
    config.write_text(
        "[scenarios.boot]\n"
        'command = ["./my-vmm", "guest.bin"]\n'
        "[scenarios.smp]\n"
        'description = "two vCPUs"\n'
        'command = ["./my-vmm", "--smp", "2"]\n'
    )
    result = _cli("scenarios", "--config", str(config))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert lines[:3] == [
        f"# {config}: the project's scenarios (`kvm-conformance check`)",
        f"boot  ./my-vmm guest.bin  ({config}:1)",
        f"smp   two vCPUs  ({config}:3)",
    ]
    assert lines[3] == "# built-in: the VMM core's (`check --builtin`, `kvm-conformance run`)"
    assert [line.split()[0] for line in lines[4:]] == sorted(SCENARIOS)


@pytest.mark.needs_kvm
@pytest.mark.parametrize("scenario", ["hello", "hello-long"])
def test_run_prints_the_guests_serial_output(scenario: str) -> None:
    result = _cli("run", scenario)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"Hello from KVM!\n", b"")


@pytest.mark.needs_kvm
@pytest.mark.needs_qemu
def test_run_tiny_bios_prints_what_qemu_prints_for_the_same_image() -> None:
    ours = _cli("run", "tiny-bios")
    with resources.as_file(
        resources.files("conformance.vmm.guests").joinpath("tiny_bios.bin")
    ) as image:
        qemu = subprocess.run(
            [
                "qemu-system-x86_64", "-accel", "kvm", "-bios", str(image),
                "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
                "-nographic", "-nodefaults", "-serial", "stdio",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
            check=False,
        )  # fmt: skip
    assert qemu.stdout.startswith(b"tiny-bios:")
    assert ours.stdout == qemu.stdout
    assert ours.returncode == qemu.returncode  # isa-debug-exit: (0x10 << 1) | 1


def test_unknown_scenario_is_one_line_listing_the_scenarios() -> None:
    result = _cli("run", "no-such-scenario")
    assert result.returncode == 2
    message = result.stderr.decode()
    assert message.count("\n") == 1
    assert "no-such-scenario" in message
    assert "hello-long" in message
    assert "Traceback" not in message


@pytest.mark.needs_kvm
def test_missing_dev_kvm_is_one_line_and_exit_2() -> None:
    # A private mount namespace with an empty /dev: the machine's /dev/kvm is out of sight.
    result = subprocess.run(
        ["unshare", "--mount", "sh", "-c", 'mount -t tmpfs tmpfs /dev && exec "$@"', "sh",
         sys.executable, "-m", "conformance", "run", "hello"],
        capture_output=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.decode().splitlines() == [
        "kvm-conformance: /dev/kvm does not exist: KVM is not available"
    ]
    assert result.stdout == b""


@pytest.mark.needs_ptrace
def test_trace_of_a_missing_command_exits_127_with_one_line() -> None:
    result = _cli("trace", "--", "/nonexistent/vmm")
    assert result.returncode == 127
    assert result.stderr.decode().splitlines() == [
        "kvm-conformance: /nonexistent/vmm: not found or not executable"
    ]


@pytest.mark.needs_ptrace
@pytest.mark.needs_kvm
def test_trace_into_a_closed_pipe_ends_quietly_and_leaves_no_tracee() -> None:
    # `| head -1`: the reader closes after one line, while the traced VMM is still running.
    pipeline = subprocess.run(
        ["sh", "-c", f'"{sys.executable}" -m conformance trace -o /dev/stdout -- '
         f'"{sys.executable}" -m conformance run exits-100k | head -n 1'],
        capture_output=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert b"Traceback" not in pipeline.stderr
    assert len(pipeline.stdout.decode().splitlines()) == 1
    survivors = subprocess.run(
        ["pgrep", "-f", "conformance run exits-100k"], capture_output=True, check=False
    )
    assert survivors.stdout == b""


@pytest.mark.needs_ptrace
def test_trace_to_a_file_loads_neither_yaml_nor_python_ptraces_syscall_tables(
    tmp_path: Path,
) -> None:
    # A short traced run is measured by the tracer's start-up: the text trace never uses PyYAML
    # (~20 ms of imports), and python-ptrace is there for ptrace() only, not for its syscall
    # package (~9 ms; the numbers come from the generated ABI).
    output = tmp_path / "trace.txt"
    program = (
        "import sys\n"
        "from conformance.cli.main import main\n"
        f"status = main(['trace', '--kvm-run', 'off', '-o', {str(output)!r}, '--', 'true'])\n"
        "print(*sys.modules, sep='\\n')\n"
        "sys.exit(status)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, timeout=60, check=True
    )
    loaded = set(result.stdout.decode().split())
    assert "conformance.tracer.ptrace_backend" in loaded  # it did trace
    assert "yaml" not in loaded
    assert not {name for name in loaded if name.startswith("ptrace.syscall")}
