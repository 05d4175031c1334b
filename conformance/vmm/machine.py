"""Scenarios and the runner: build a VM for a scenario, run it to completion, report the result.

A run is always bounded, by a number of exits and by wall-clock time, so that no guest (random
bytes included) can hang the caller. The time limit uses KVM's own mechanism: SIGALRM's handler
sets kvm_run.immediate_exit, so KVM_RUN returns EINTR whether the signal lands inside the guest
or between two runs, and the loop then sees the deadline. The timer needs the main thread, where
Python runs signal handlers.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType, MappingProxyType

from conformance.abi import _generated as abi
from conformance.model import scenarios
from conformance.model.errors import ConformanceError, GuestFault, KvmUnavailableError
from conformance.vmm import cpuid, entry
from conformance.vmm.devices import IoBus, MmioBus
from conformance.vmm.devices.debug_exit import (
    DEBUG_EXIT_PORT,
    DEBUG_EXIT_PORT_COUNT,
    DebugExitPort,
    DebugExitRequested,
)
from conformance.vmm.devices.serial import COM1_PORT, REGISTER_COUNT, Serial16550
from conformance.vmm.devices.vga_text import TEXT_SCREEN_BASE, TEXT_SCREEN_SIZE, TextScreen
from conformance.vmm.exits import (
    Exit,
    FailEntryExit,
    HltExit,
    InternalErrorExit,
    IntrExit,
    IoDirection,
    IoExit,
    MmioExit,
    ShutdownExit,
)
from conformance.vmm.guests import GuestImage, guest
from conformance.vmm.kvm import Kvm
from conformance.vmm.memory import GuestMemory, MemoryLayout
from conformance.vmm.registers import format_registers
from conformance.vmm.vcpu import Vcpu
from conformance.vmm.vm import Vm

EXPECTED_API_VERSION = 12
RAM_SIZE = 256 * 1024  # what the article's program maps, and what the small guests need
QEMU_LAYOUT_RAM_SIZE = 1 << 30
# QEMU's choices on x86 (target/i386/kvm/kvm.c): the identity-map page, with the three TSS
# pages right above it, just below the 4 GiB PCI hole's BIOS area.
IDENTITY_MAP_GPA = 0xFEFFC000
TSS_GPA = IDENTITY_MAP_GPA + 0x1000
_VCPU_ID = 0  # the one vCPU; also its APIC ID, as QEMU numbers them


@dataclass(frozen=True)
class RunLimits:
    """Bounds of one run; exits_100k needs just over 100,000 exits."""

    max_exits: int = 1_000_000
    timeout_seconds: float = 10.0


@dataclass(frozen=True)
class RunResult:
    """What a finished run produced. `status` is the debug-exit status, or 0 after HLT."""

    scenario: str
    serial_output: bytes = b""
    status: int = 0
    exit_counts: Mapping[str, int] = field(default_factory=dict)
    final_exit: Exit | None = None
    screen_text: str = ""


class RunLimitExceeded(ConformanceError):
    """The guest used up the run's exit budget or wall-clock time without finishing."""

    exit_status = 3  # as a guest fault: the guest, not the user, ended the run


class UnhandledExitError(ConformanceError):
    """KVM_RUN exited for a reason this machine has no device or policy for."""

    def __init__(self, exit_value: Exit) -> None:
        super().__init__(f"no handler for {exit_value}")
        self.exit = exit_value


class VcpuFault(GuestFault):
    """A GuestFault with the exit that ended the run and the vCPU's registers at that moment."""

    def __init__(self, exit_value: Exit, registers: str) -> None:
        super().__init__(f"the guest stopped with {exit_value}\n{registers}")
        self.exit = exit_value
        self.registers = registers


_FAULTS = (ShutdownExit, FailEntryExit, InternalErrorExit)
_OUT = IoDirection.OUT  # a module global: an enum member lookup costs more, once per IO exit


def run_scenario(name: str, limits: RunLimits | None = None) -> RunResult:
    """Run the built-in scenario `name` to completion; UnknownScenarioError lists the known ones."""
    return _PROGRAMS[scenarios.scenario(name).name](limits or RunLimits())


def run_guest(image: GuestImage, limits: RunLimits | None = None, scenario: str = "") -> RunResult:
    """Run one guest image on a fresh VM with a UART, the debug-exit port and a text screen."""
    limits = limits or RunLimits()
    with _open_kvm() as kvm, kvm.create_vm() as vm, GuestMemory(vm) as memory:
        _require_capabilities(kvm, _GUEST_CAPABILITIES)
        vm.set_identity_map_addr(IDENTITY_MAP_GPA)
        vm.set_tss_addr(TSS_GPA)
        _load(vm, memory, image)
        with vm.create_vcpu(_VCPU_ID) as vcpu:
            guest_cpuid = cpuid.for_vcpu(kvm.supported_cpuid(), apic_id=_VCPU_ID)
            vcpu.set_cpuid2(guest_cpuid)
            entry.enter(vcpu, memory, image, cpuid.processor_signature(guest_cpuid))
            serial, screen = Serial16550(), TextScreen()
            io_bus, mmio_bus = IoBus(), MmioBus()
            io_bus.register(COM1_PORT, REGISTER_COUNT, serial)
            io_bus.register(DEBUG_EXIT_PORT, DEBUG_EXIT_PORT_COUNT, DebugExitPort())
            mmio_bus.register(TEXT_SCREEN_BASE, TEXT_SCREEN_SIZE, screen)
            counts: dict[type, int] = {}
            status, final_exit = _run_loop(vcpu, io_bus, mmio_bus, limits, counts)
    return RunResult(
        scenario=scenario or image.name,
        serial_output=serial.output,
        status=status,
        exit_counts={kind.__name__: count for kind, count in counts.items()},
        final_exit=final_exit,
        screen_text=screen.text(),
    )


def _open_kvm() -> Kvm:
    kvm = Kvm()
    version = kvm.api_version()
    if version != EXPECTED_API_VERSION:
        kvm.close()
        raise KvmUnavailableError(f"KVM API version {version}; this VMM speaks version 12")
    return kvm


# What run_guest uses beyond the KVM API every host has: the two x86 VM setup ioctls (VMX needs
# both pages below 4 GiB) and KVM_GET_SUPPORTED_CPUID. Checked first, as QEMU checks them, so a
# host without one gets a message naming it instead of an ioctl's bare errno.
_GUEST_CAPABILITIES = {
    "KVM_CAP_SET_IDENTITY_MAP_ADDR": abi.KVM_CAP_SET_IDENTITY_MAP_ADDR,
    "KVM_CAP_SET_TSS_ADDR": abi.KVM_CAP_SET_TSS_ADDR,
    "KVM_CAP_EXT_CPUID": abi.KVM_CAP_EXT_CPUID,
}


def _require_capabilities(kvm: Kvm, capabilities: Mapping[str, int]) -> None:
    missing = [name for name, number in capabilities.items() if not kvm.check_extension(number)]
    if missing:
        raise KvmUnavailableError(f"this host's KVM lacks {', '.join(missing)}")


def _load(vm: Vm, memory: GuestMemory, image: GuestImage) -> None:
    """RAM at gpa 0 (slot 0), then the image: into RAM, or as ROM in slots of its own."""
    memory.register(0, 0, RAM_SIZE)
    if image.load_gpa + len(image.image) <= RAM_SIZE:
        memory.write(image.load_gpa, image.image)
        return
    # Firmware: read-only where KVM can enforce it, so guest writes become MMIO as on ROM.
    read_only = bool(vm.check_extension(abi.KVM_CAP_READONLY_MEM))
    rom_size = len(image.image)
    for slot, gpa in enumerate((image.load_gpa, *image.alias_gpas), start=1):
        memory.register(slot, gpa, rom_size, read_only=read_only)
        memory.write(gpa, image.image)


def _run_loop(
    vcpu: Vcpu, io_bus: IoBus, mmio_bus: MmioBus, limits: RunLimits, counts: dict[type, int]
) -> tuple[int, Exit]:
    """KVM_RUN until the guest ends the run; (status, the last exit). Counts exits by type."""
    # IO exits are nearly all of a run's exits: they take the first branch, with the methods
    # looked up once and a local counter in place of the per-type dict.
    run, io_write = vcpu.run, io_bus.write
    io_exits = 0
    try:
        with _wall_clock_limit(vcpu, limits.timeout_seconds) as timed_out:
            for _ in range(limits.max_exits):
                exit_value = run()
                if type(exit_value) is IoExit:  # exit types are final: `is` decides, fastest
                    io_exits += 1
                    if exit_value.direction is _OUT:
                        try:
                            io_write(exit_value.port, exit_value.size, exit_value.data)
                        except DebugExitRequested as request:
                            return request.status, exit_value
                    else:
                        data = io_bus.read(exit_value.port, exit_value.size, exit_value.count)
                        vcpu.answer_io_in(data)
                    continue
                kind = type(exit_value)
                counts[kind] = counts.get(kind, 0) + 1
                if isinstance(exit_value, MmioExit):
                    if exit_value.is_write:
                        mmio_bus.write(exit_value.phys_addr, exit_value.data)
                    else:
                        vcpu.answer_mmio_read(mmio_bus.read(exit_value.phys_addr, exit_value.len))
                elif isinstance(exit_value, HltExit):
                    return 0, exit_value
                elif isinstance(exit_value, IntrExit):
                    if timed_out():
                        raise RunLimitExceeded(
                            f"the guest was still running after {limits.timeout_seconds} s"
                        )
                elif isinstance(exit_value, _FAULTS):
                    registers = format_registers(vcpu.get_regs(), vcpu.get_sregs())
                    raise VcpuFault(exit_value, registers)
                else:
                    raise UnhandledExitError(exit_value)
        raise RunLimitExceeded(f"the guest made {limits.max_exits} exits without finishing")
    finally:
        if io_exits:
            counts[IoExit] = io_exits


@contextmanager
def _wall_clock_limit(vcpu: Vcpu, seconds: float) -> Iterator[Callable[[], bool]]:
    """SIGALRM after `seconds` makes KVM_RUN return; yields "has the time run out?"."""
    expired = False

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        nonlocal expired
        expired = True
        vcpu.request_immediate_exit()

    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    started = time.monotonic()
    previous_delay, previous_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield lambda: expired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        # Someone else's alarm (pytest-timeout's, say) keeps running with the time it has left;
        # one already overdue fires right away rather than never.
        if previous_delay or previous_interval:
            remaining = max(previous_delay - (time.monotonic() - started), 1e-6)
            signal.setitimer(signal.ITIMER_REAL, remaining, previous_interval)


def _memory_setup(limits: RunLimits) -> RunResult:
    """The article's first program: a VM with 256 KiB of RAM in slot 0 and no vCPU."""
    with _open_kvm() as kvm, kvm.create_vm() as vm, GuestMemory(vm) as memory:
        memory.register(0, 0, RAM_SIZE)
    return RunResult(scenario="memory-setup")


def _qemu_memory_layout(limits: RunLimits) -> RunResult:
    """1 GiB of RAM mapped inside QEMU's PROT_NONE reservation, slot 0 at gpa 0."""
    with _open_kvm() as kvm, kvm.create_vm() as vm, GuestMemory(vm) as memory:
        memory.register(0, 0, QEMU_LAYOUT_RAM_SIZE, layout=MemoryLayout.QEMU)
    return RunResult(scenario="qemu-memory-layout")


def _guest_scenario(scenario: str, guest_name: str) -> Callable[[RunLimits], RunResult]:
    return lambda limits: run_guest(guest(guest_name), limits, scenario)


# What the VMM core runs for each built-in scenario (model/scenarios.py describes them).
_PROGRAMS: Mapping[str, Callable[[RunLimits], RunResult]] = MappingProxyType(
    {
        "memory-setup": _memory_setup,
        "qemu-memory-layout": _qemu_memory_layout,
        "hello": _guest_scenario("hello", "hello"),
        "hello-long": _guest_scenario("hello-long", "hello_long"),
        "tiny-bios": _guest_scenario("tiny-bios", "tiny_bios"),
        "exits-100k": _guest_scenario("exits-100k", "exits_100k"),
    }
)
