"""Kvm -> Vm -> Vcpu on the real kernel: typed results, KvmError with name and errno, no leaks."""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conformance.abi import _generated as abi
from conformance.model.errors import ConformanceError, GuestFault, KvmError, KvmUnavailableError
from conformance.vmm import _sys
from conformance.vmm.entry import enter_real_mode
from conformance.vmm.exits import HltExit, IntrExit
from conformance.vmm.guests import GuestImage
from conformance.vmm.kvm import Kvm
from conformance.vmm.machine import RunLimitExceeded, RunLimits, VcpuFault, run_guest
from conformance.vmm.memory import QEMU_RAM_ALIGNMENT, GuestMemory, MemoryLayout
from conformance.vmm.vm import Vm

pytestmark = pytest.mark.needs_kvm

RAM = 256 * 1024
# Real-mode code at 0x1000, entered with CS = 0.
HLT = b"\xf4"
SPIN = b"\xeb\xfe"  # jmp . : never exits to userspace by itself
UD2 = b"\x0f\x0b"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def mapping_count() -> int:
    return len(Path("/proc/self/maps").read_text().splitlines())


def real_mode(code: bytes) -> GuestImage:
    return GuestImage("test", code, 0x1000, "real", 0x1000)


@pytest.fixture
def vm() -> Iterator[Vm]:
    with Kvm() as kvm, kvm.create_vm() as vm:
        yield vm


def test_system_ioctls_answer_typed_values() -> None:
    with Kvm() as kvm:
        assert kvm.api_version() == 12
        assert kvm.check_extension(abi.KVM_CAP_USER_MEMORY) == 1
        assert kvm.vcpu_mmap_size() >= 4096
        cpuid = kvm.supported_cpuid()
        assert any(entry.function == 0 for entry in cpuid)
        assert 0x10 in kvm.msr_index_list()  # IA32_TIME_STAMP_COUNTER


def test_misaligned_memory_region_is_kvm_error_with_name_and_errno(vm: Vm) -> None:
    with GuestMemory(vm) as memory:
        slot = memory.register(0, 0, RAM)
        with pytest.raises(KvmError) as error:
            vm.set_user_memory_region(1, 0x100000, RAM, slot.host_address + 1)
    assert error.value.ioctl == "KVM_SET_USER_MEMORY_REGION"
    assert error.value.errno == errno.EINVAL
    assert str(error.value).startswith("KVM_SET_USER_MEMORY_REGION failed: EINVAL")


def test_overlapping_slot_fails_and_unmaps_its_memory(vm: Vm) -> None:
    with GuestMemory(vm) as memory:
        memory.register(0, 0, RAM)
        maps = mapping_count()
        with pytest.raises(KvmError) as error:
            memory.register(1, 0x1000, RAM)
        assert error.value.errno == errno.EEXIST
        assert mapping_count() == maps
        assert len(memory.slots) == 1


def test_qemu_layout_aligns_ram_and_keeps_one_guard_page(vm: Vm) -> None:
    size = 64 << 20
    with GuestMemory(vm) as memory:
        slot = memory.register(0, 0, size, layout=MemoryLayout.QEMU)
        assert slot.host_address % QEMU_RAM_ALIGNMENT == 0
        assert permissions_at(slot.host_address) == "rw-p"
        assert permissions_at(slot.host_address + size) == "---p"


def permissions_at(address: int) -> str | None:
    """The permissions of the mapping holding `address`, from /proc/self/maps."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        span, permissions = line.split()[:2]
        start, end = (int(bound, 16) for bound in span.split("-"))
        if start <= address < end:
            return permissions
    return None


def test_guest_memory_translates_and_bounds_checks(vm: Vm) -> None:
    with GuestMemory(vm) as memory:
        slot = memory.register(0, 0, RAM)
        memory.write(0x1234, b"abc")
        assert memory.read(0x1234, 3) == b"abc"
        assert memory.hva(0x1234) == slot.host_address + 0x1234
        assert memory.gpa(slot.host_address + 0x1234) == 0x1234
        for gpa, length in ((RAM - 1, 2), (RAM, 1), (0xB8000, 2)):
            with pytest.raises(ConformanceError, match="not inside one memory slot"):
                memory.read(gpa, length)
        with pytest.raises(ConformanceError):
            memory.gpa(slot.host_address - 1)


def test_registers_round_trip(vm: Vm) -> None:
    with vm.create_vcpu(0) as vcpu:
        regs = vcpu.get_regs()
        regs.rax, regs.rip = 0x1122334455667788, 0x1000
        vcpu.set_regs(regs)
        assert (vcpu.get_regs().rax, vcpu.get_regs().rip) == (0x1122334455667788, 0x1000)
        sregs = vcpu.get_sregs()
        assert sregs.cs.selector == 0xF000  # the reset state
        sregs.cs.base = 0
        vcpu.set_sregs(sregs)
        assert vcpu.get_sregs().cs.base == 0


def test_msrs_and_cpuid(vm: Vm) -> None:
    sysenter_cs = 0x174
    with Kvm() as kvm, vm.create_vcpu(0) as vcpu:
        vcpu.set_cpuid2(kvm.supported_cpuid())
        assert vcpu.set_msrs({sysenter_cs: 0x10}) == 1
        assert vcpu.get_msrs([sysenter_cs]) == {sysenter_cs: 0x10}


def test_immediate_exit_returns_intr_and_is_cleared(vm: Vm) -> None:
    with GuestMemory(vm) as memory:
        memory.register(0, 0, RAM)
        memory.write(0x1000, HLT)
        with vm.create_vcpu(0) as vcpu:
            enter_real_mode(vcpu, 0x1000)
            vcpu.request_immediate_exit()
            assert vcpu.run() == IntrExit()
            assert vcpu.run() == HltExit()


def test_create_vcpu_failure_leaks_nothing(vm: Vm) -> None:
    fds = open_fds()
    for _ in range(20):
        with pytest.raises(KvmError) as error:
            vm.create_vcpu(1 << 20)
        assert error.value.ioctl == "KVM_CREATE_VCPU"
    assert open_fds() == fds


def test_objects_in_loops_leak_no_fd() -> None:
    fds = open_fds()
    for _ in range(50):
        with Kvm() as kvm, kvm.create_vm() as vm, GuestMemory(vm) as memory:
            memory.register(0, 0, RAM)
            with vm.create_vcpu(0) as vcpu:
                vcpu.get_regs()
    assert open_fds() == fds


def test_closed_objects_fail_with_ebadf_not_a_reused_fd() -> None:
    kvm = Kvm()
    vm = kvm.create_vm()
    vcpu = vm.create_vcpu(0)
    vcpu_fd = vcpu.fd
    for closeable in (vcpu, vm, kvm):
        closeable.close()
        closeable.close()  # closing twice is harmless
    # Other files take the three freed fd numbers, the vCPU's among them: run() must not issue
    # KVM_RUN on whatever now has that number.
    reused = [os.open(os.devnull, os.O_RDONLY) for _ in range(3)]
    try:
        assert vcpu_fd in reused
        with pytest.raises(KvmError) as error:
            vcpu.run()
    finally:
        for fd in reused:
            os.close(fd)
    assert (error.value.ioctl, error.value.errno) == ("KVM_RUN", errno.EBADF)


def test_missing_device_is_kvm_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_sys, "KVM_DEVICE", "/nonexistent/kvm")
    with pytest.raises(KvmUnavailableError) as error:
        Kvm()
    assert "\n" not in str(error.value)


def test_triple_fault_is_guest_fault_with_registers() -> None:
    # ud2 in long mode with an IDT of zeroed (not-present) gates: #UD, then #NP, then #DF
    # through another absent gate, which is a triple fault: KVM_EXIT_SHUTDOWN.
    fds = open_fds()
    with pytest.raises(GuestFault) as error:
        run_guest(GuestImage("ud2", UD2, 0x1000, "long", 0x1000))
    assert isinstance(error.value, VcpuFault)
    assert type(error.value.exit).__name__ == "ShutdownExit"
    assert "RIP=0000000000001000" in str(error.value)
    assert "EFER=0000000000000500" in error.value.registers
    assert open_fds() == fds


def test_spinning_guest_hits_the_wall_clock_limit_on_time() -> None:
    fds = open_fds()
    start = time.monotonic()
    with pytest.raises(RunLimitExceeded, match="still running"):
        run_guest(real_mode(SPIN), RunLimits(timeout_seconds=0.2))
    assert time.monotonic() - start < 2.0
    assert open_fds() == fds


def test_exit_budget_bounds_a_guest_that_keeps_exiting() -> None:
    out_forever = b"\xe6\x80\xeb\xfc"  # out %al, $0x80; jmp back to it
    with pytest.raises(RunLimitExceeded, match="100 exits"):
        run_guest(real_mode(out_forever), RunLimits(max_exits=100))


def test_halting_guest_ends_with_status_zero() -> None:
    result = run_guest(real_mode(HLT))
    assert (result.status, result.final_exit, dict(result.exit_counts)) == (
        0,
        HltExit(),
        {"HltExit": 1},
    )


def test_run_timer_leaves_an_outer_alarm_armed() -> None:
    fired: list[int] = []
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(signum))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        run_guest(real_mode(HLT))
        assert signal.getitimer(signal.ITIMER_REAL)[0] > 0
        time.sleep(0.5)
        assert fired == [signal.SIGALRM]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
