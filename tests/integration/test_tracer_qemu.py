"""Acceptance on QEMU: every KVM ioctl it issues is seen and every pointer argument decoded, and
the structs strace can decode read the same through our decoder."""

from __future__ import annotations

import os
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from conformance.abi.ioctls import by_name, by_number
from conformance.model.events import Event, FieldValue, Ioctl
from conformance.normalize.strace_syntax import StraceValue, parse_log
from conformance.tracer import trace
from conformance.tracer.decode import decodes_pointer

pytestmark = [pytest.mark.needs_ptrace, pytest.mark.needs_kvm, pytest.mark.needs_qemu]

_QEMU = [
    "qemu-system-x86_64", "-accel", "kvm", "-m", "1G", "-nographic", "-nodefaults", "-S",
    "-monitor", "stdio",
]  # fmt: skip
# The ioctls strace decodes; (name, whether strace prints them at exit: the kernel's answer).
_STRACE_DECODED = {
    "KVM_SET_USER_MEMORY_REGION": False, "KVM_SET_REGS": False, "KVM_GET_REGS": True,
    "KVM_SET_SREGS": False, "KVM_GET_SREGS": True, "KVM_SET_CPUID2": False,
    "KVM_GET_SUPPORTED_CPUID": True,
}  # fmt: skip


def _quit_on_stdin() -> int:
    read_end, write_end = os.pipe()
    os.write(write_end, b"quit\n")
    os.close(write_end)
    return read_end


# Both runs on one CPU (CPUID leaf 1, 0xb and 0x1f carry the APIC id of the CPU the call ran on)
# and without address space randomization (userspace_addr is a host address).
_CPU = 0
_NO_ASLR = ["setarch", "x86_64", "--addr-no-randomize"]


@pytest.fixture(scope="module")
def qemu_ioctls() -> list[Ioctl]:
    events: list[Event] = []
    stdin = _quit_on_stdin()
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {_CPU})
    try:
        with open(os.devnull, "w") as devnull:
            outcome = trace(
                [*_NO_ASLR, *_QEMU], events.append, stdin=stdin, stdout=devnull.fileno()
            )
    finally:
        os.sched_setaffinity(0, affinity)
        os.close(stdin)
    assert outcome.exit_status == 0 and outcome.opened_kvm
    return [event for event in events if isinstance(event, Ioctl)]


@pytest.fixture(scope="module")
def strace_log(tmp_path_factory: pytest.TempPathFactory) -> str:
    log = tmp_path_factory.mktemp("strace") / "qemu.strace"
    command = ["strace", "-f", "-v", "-X", "verbose", "-s", "65536", "-e", "trace=ioctl"]
    subprocess.run(
        ["taskset", "-c", str(_CPU), *_NO_ASLR, *command, "-o", str(log), *_QEMU],
        input=b"quit\n",
        capture_output=True,
        check=True,
    )
    return log.read_text()


def test_every_pointer_argument_is_decoded(qemu_ioctls: list[Ioctl]) -> None:
    assert len(qemu_ioctls) > 150
    assert all(ioctl.name is not None for ioctl in qemu_ioctls)
    undecoded = [
        ioctl.name
        for ioctl in qemu_ioctls
        if ioctl.name and decodes_pointer(by_name(ioctl.name))
        and ioctl.inputs is None and ioctl.outputs is None
    ]  # fmt: skip
    assert undecoded == []


def _strace_ioctls(log: str) -> list[tuple[str, list[StraceValue]]]:
    """(request name, parsed arguments) of each KVM ioctl in an strace log."""
    found = []
    for call in parse_log(Path("qemu.strace"), log).calls:
        if call.name != "ioctl":
            continue
        arguments = call.arguments()
        request = arguments[1]
        spec = by_number(request) if isinstance(request, int) else None
        name = spec.name if spec is not None else str(request)
        if name.startswith("KVM_"):
            found.append((name, arguments))
    return found


def test_every_kvm_ioctl_strace_sees_is_seen(qemu_ioctls: list[Ioctl], strace_log: str) -> None:
    seen_by_strace = {name for name, _ in _strace_ioctls(strace_log)}
    assert seen_by_strace
    assert seen_by_strace <= {ioctl.name for ioctl in qemu_ioctls}


def _comparable(ours: FieldValue, theirs: StraceValue) -> FieldValue:
    """Our fields cut to what strace prints (it leaves out padding)."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        return {key: _comparable(ours[key], theirs[key]) for key in theirs if key in ours}
    if isinstance(ours, list) and isinstance(theirs, list):
        return [_comparable(mine, other) for mine, other in zip(ours, theirs, strict=False)]
    return ours


def test_structs_match_strace_field_by_field(qemu_ioctls: list[Ioctl], strace_log: str) -> None:
    theirs: dict[str, list[StraceValue]] = defaultdict(list)
    for name, arguments in _strace_ioctls(strace_log):
        if name in _STRACE_DECODED and isinstance(arguments[2], dict):
            theirs[name].append(arguments[2])
    ours: dict[str, list[FieldValue]] = defaultdict(list)
    for ioctl in qemu_ioctls:
        if ioctl.name in _STRACE_DECODED and ioctl.errno is None:
            fields = ioctl.outputs if _STRACE_DECODED[ioctl.name] else ioctl.inputs
            assert fields is not None
            ours[ioctl.name].append(fields)
    assert set(theirs) == set(ours) and theirs
    for name, structs in theirs.items():
        assert len(ours[name]) == len(structs), name
        for mine, other in zip(ours[name], structs, strict=True):
            assert _comparable(mine, other) == other, name
