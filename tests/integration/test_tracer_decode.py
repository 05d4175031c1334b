"""The tracer's decoding, checked against programs that print what they passed and received."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from conformance.model.events import Event, FieldValue, Ioctl, KvmRunMode, Mmap, OpenKvm
from conformance.tracer import SpawnError, TraceOutcome, trace
from conformance.tracer.raw_yaml import RawYamlWriter
from conformance.tracer.text import format_event

_TRACEES = Path(__file__).parent.parent / "fixtures" / "tracees"
pytestmark = [pytest.mark.needs_ptrace, pytest.mark.needs_kvm]


def _traced(
    argv: list[str], *, kvm_run: KvmRunMode = "full", also: Callable[[Event], None] | None = None
) -> tuple[TraceOutcome, list[Event], str]:
    """Trace argv; its stdout comes back as text (through a pipe that the tracee inherits)."""
    events: list[Event] = []

    def record(event: Event) -> None:
        events.append(event)
        if also is not None:
            also(event)

    read_end, write_end = os.pipe()
    try:
        outcome = trace(argv, record, stdout=write_end, kvm_run=kvm_run)
    finally:
        os.close(write_end)
    with os.fdopen(read_end) as output:
        return outcome, events, output.read()


def _at(fields: FieldValue | None, *path: str) -> Any:
    """A nested field (fields["io"]["data"]), typed loosely for assertions."""
    value: Any = fields
    for key in path:
        value = value[key]
    return value


def _ioctls(events: list[Event], name: str) -> list[Ioctl]:
    return [event for event in events if isinstance(event, Ioctl) and event.name == name]


@pytest.fixture(scope="module")
def kvm_calls_program(tmp_path_factory: pytest.TempPathFactory) -> str:
    if subprocess.run(["which", "gcc"], capture_output=True, check=False).returncode != 0:
        pytest.skip("gcc is not installed")
    binary = tmp_path_factory.mktemp("tracee") / "kvm_calls"
    subprocess.run(
        ["gcc", "-O1", "-Wall", "-o", str(binary), str(_TRACEES / "kvm_calls.c")], check=True
    )
    return str(binary)


@pytest.fixture(scope="module")
def c_trace(kvm_calls_program: str) -> tuple[TraceOutcome, list[Event], dict[str, int]]:
    outcome, events, output = _traced([kvm_calls_program])
    printed = dict(line.split("=") for line in output.splitlines())
    return outcome, events, {key: int(value, 16) for key, value in printed.items()}


@pytest.mark.needs_gcc
def test_c_program_struct_fields_are_decoded_as_passed(
    c_trace: tuple[TraceOutcome, list[Event], dict[str, int]],
) -> None:
    outcome, events, printed = c_trace
    assert outcome.exit_status == 0 and outcome.opened_kvm and outcome.fast_path_used
    [region] = _ioctls(events, "KVM_SET_USER_MEMORY_REGION")
    assert region.inputs == {
        "slot": 0, "flags": 0, "guest_phys_addr": 0, "memory_size": 0x20000,
        "userspace_addr": printed["userspace_addr"],
    }  # fmt: skip
    [supported] = _ioctls(events, "KVM_GET_SUPPORTED_CPUID")
    assert supported.inputs == {"nent": 256, "padding": 0}
    assert supported.outputs is not None and supported.outputs["nent"] == printed["cpuid_nent"]
    entries = supported.outputs["entries"]
    assert isinstance(entries, list) and len(entries) == printed["cpuid_nent"]
    assert _at(entries[-1], "function") == printed["cpuid_last_function"]
    [set_cpuid] = _ioctls(events, "KVM_SET_CPUID2")
    assert set_cpuid.inputs == supported.outputs
    [set_msrs] = _ioctls(events, "KVM_SET_MSRS")
    msr = {"index": 0x174, "reserved": 0, "data": 0x10}
    assert set_msrs.inputs == {"nmsrs": 1, "pad": 0, "entries": [msr]}
    assert set_msrs.ret == printed["set_msrs"]
    [get_msrs] = _ioctls(events, "KVM_GET_MSRS")
    assert get_msrs.inputs == {"nmsrs": 1, "pad": 0, "entries": [{**msr, "data": 0}]}
    assert get_msrs.outputs == {"nmsrs": 1, "pad": 0, "entries": [{**msr, "data": 0x10}]}
    [get_sregs] = _ioctls(events, "KVM_GET_SREGS")
    assert get_sregs.inputs is None and get_sregs.outputs is not None
    assert _at(get_sregs.outputs, "cs", "selector") == printed["cs_selector_before"]
    [set_sregs] = _ioctls(events, "KVM_SET_SREGS")
    assert set_sregs.inputs is not None
    assert _at(set_sregs.inputs, "cs") == {**_at(get_sregs.outputs, "cs"), "selector": 0, "base": 0}
    [set_regs] = _ioctls(events, "KVM_SET_REGS")
    assert set_regs.inputs is not None
    assert (set_regs.inputs["rip"], set_regs.inputs["rbx"]) == (0x1000, 0x1234)
    [get_regs] = _ioctls(events, "KVM_GET_REGS")
    assert get_regs.outputs is not None
    assert (get_regs.outputs["rax"], get_regs.outputs["rbx"]) == (printed["rax"], printed["rbx"])


@pytest.mark.needs_gcc
def test_c_program_exits_and_answers_are_decoded(
    c_trace: tuple[TraceOutcome, list[Event], dict[str, int]],
) -> None:
    _, events, printed = c_trace
    runs = _ioctls(events, "KVM_RUN")
    exits = [run.run_exit for run in runs]
    entries = [run.run_entry for run in runs]
    io_out, io_in, mmio_write, mmio_read, hlt = exits
    assert io_out is not None and io_in is not None
    assert io_out["io"] == {
        "direction": 1, "size": 1, "port": printed["io_out_port"], "count": 1,
        "data_offset": 4096, "data": bytes([printed["io_out_data"]]),
    }  # fmt: skip
    assert io_in["io"] == {"direction": 0, "size": 1, "port": 0x11, "count": 1, "data_offset": 4096}
    assert mmio_write == {
        "exit_reason": 6,
        "mmio": {"phys_addr": printed["mmio_write_addr"], "data": b"\xa5", "len": 1, "is_write": 1},
    }
    assert mmio_read == {
        "exit_reason": 6, "mmio": {"phys_addr": 0x80001, "len": 1, "is_write": 0}
    }  # fmt: skip
    assert hlt == {"exit_reason": printed["exit_reason"]}
    control = {"request_interrupt_window": 0, "immediate_exit": 0}
    assert entries == [
        None, None, {**control, "io": {"data": b"\xa5"}}, None, {**control, "mmio": {"data": b"<"}}
    ]  # fmt: skip


@pytest.mark.needs_gcc
def test_c_program_fds_roles_unknown_ioctl_and_mmap(
    c_trace: tuple[TraceOutcome, list[Event], dict[str, int]],
) -> None:
    _, events, printed = c_trace
    [opened] = [event for event in events if isinstance(event, OpenKvm)]
    assert (opened.path, opened.errno) == ("/dev/kvm", None)
    [unknown] = [event for event in events if isinstance(event, Ioctl) and event.name is None]
    assert (unknown.fd_role, unknown.request, unknown.errno) == (
        "vm",
        0xAEFE,
        printed["unknown_errno"],
    )
    [create_vcpu] = _ioctls(events, "KVM_CREATE_VCPU")
    assert create_vcpu.new_fd_role == "vcpu0"
    [run_page] = [event for event in events if isinstance(event, Mmap) and event.fd_role]
    assert (run_page.fd_role, run_page.length) == ("vcpu0", 3 * 4096)
    lines = [format_event(event) for event in events]
    assert f"dup(5<vcpu0>) = {printed['vcpu_copy']}<vcpu0>" in "\n".join(lines)
    assert any("index=0x174 /* IA32_SYSENTER_CS */" in line for line in lines)


def _run_scenario_argv(name: str) -> list[str]:
    code = f"from conformance.vmm.machine import run_scenario; run_scenario({name!r})"
    return [sys.executable, "-c", code]


def test_vmm_core_hello_serial_bytes_are_in_the_io_exits() -> None:
    outcome, events, _ = _traced(_run_scenario_argv("hello"))
    assert outcome.exit_status == 0
    runs = _ioctls(events, "KVM_RUN")
    written = b"".join(
        _at(run.run_exit, "io", "data")
        for run in runs
        if run.run_exit and "io" in run.run_exit and _at(run.run_exit, "io", "port") == 0x3F8
    )
    assert written == b"Hello from KVM!\n"
    answers = [run.run_entry for run in runs if run.run_entry is not None]
    assert answers and all(_at(answer, "io", "data")[0] & 0x20 for answer in answers)
    assert runs[-1].run_exit == {"exit_reason": 5}


def test_kvm_run_off_records_everything_but_kvm_run() -> None:
    outcome, events, _ = _traced(_run_scenario_argv("hello"), kvm_run="off")
    assert outcome.exit_status == 0
    assert not _ioctls(events, "KVM_RUN") and _ioctls(events, "KVM_SET_REGS")


def test_a_missing_command_is_a_clear_error() -> None:
    with pytest.raises(SpawnError, match="no-such-command-here"):
        trace(["no-such-command-here"], lambda event: None)


@pytest.mark.parametrize(("command", "status"), [("true", 0), ("false", 1)])
def test_a_command_without_kvm_reports_its_status(command: str, status: int) -> None:
    outcome, events, _ = _traced([command])
    assert outcome.exit_status == status and not outcome.opened_kvm
    assert outcome.message is not None and "without opening /dev/kvm" in outcome.message
    assert not [event for event in events if isinstance(event, Ioctl)]


def test_raw_yaml_stream_is_the_trace_format() -> None:
    output = io.StringIO()
    writer = RawYamlWriter(output, {"tool": "test"})
    outcome, _, _ = _traced(_run_scenario_argv("memory-setup"), also=writer)
    writer.close()
    document = yaml.safe_load(output.getvalue())
    assert document["schema"] == "kvm-conformance-raw/1"
    [calls] = document["threads"].values()
    [region] = [call for call in calls if call.get("req") == "KVM_SET_USER_MEMORY_REGION"]
    assert region["in"]["slot"] == 0 and region["fd_role"] == "vm" and region["ret"] == 0
    assert outcome.exit_status == 0


def test_kvm_opened_through_a_symlink_or_a_relative_path_is_seen(tmp_path: Path) -> None:
    """Opens of existing files that are not devices skip their exit stop; a link to /dev/kvm,
    absolute or relative to a directory fd, is a device and is followed as before."""
    (tmp_path / "kvm-link").symlink_to("/dev/kvm")
    code = (
        "import fcntl, os, sys\n"
        "from conformance.abi import _generated as abi\n"
        "directory = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)\n"
        "absolute = os.open(os.path.join(sys.argv[1], 'kvm-link'), os.O_RDWR)\n"
        "relative = os.open('kvm-link', os.O_RDWR, dir_fd=directory)\n"
        "for fd in (absolute, relative):\n"
        "    fcntl.ioctl(fd, abi.IOCTL_NUMBERS['KVM_GET_API_VERSION'], 0)\n"
    )
    outcome, events, _ = _traced([sys.executable, "-c", code, str(tmp_path)])
    assert outcome.exit_status == 0
    opened = [event.path for event in events if isinstance(event, OpenKvm)]
    assert opened == [str(tmp_path / "kvm-link"), "kvm-link"]
    assert [call.fd_role for call in _ioctls(events, "KVM_GET_API_VERSION")] == ["kvm", "kvm2"]
