"""The VM fd: guest memory slots, vCPUs and the in-kernel devices a VMM creates on it."""

from __future__ import annotations

import ctypes
from contextlib import ExitStack
from typing import TYPE_CHECKING

from conformance.abi import _generated as abi
from conformance.abi.ioctls import by_name
from conformance.vmm import _sys
from conformance.vmm._closing import Closing
from conformance.vmm.vcpu import Vcpu

if TYPE_CHECKING:
    from conformance.vmm.kvm import Kvm

_SET_USER_MEMORY_REGION = by_name("KVM_SET_USER_MEMORY_REGION")
_CREATE_VCPU = by_name("KVM_CREATE_VCPU")
_GET_VCPU_MMAP_SIZE = by_name("KVM_GET_VCPU_MMAP_SIZE")
_CHECK_EXTENSION = by_name("KVM_CHECK_EXTENSION")
_SET_TSS_ADDR = by_name("KVM_SET_TSS_ADDR")
_SET_IDENTITY_MAP_ADDR = by_name("KVM_SET_IDENTITY_MAP_ADDR")
_CREATE_IRQCHIP = by_name("KVM_CREATE_IRQCHIP")


class Vm(Closing):
    """A VM fd, created by Kvm.create_vm. Closing it frees the VM once its vCPU fds are closed."""

    def __init__(self, fd: int, kvm: Kvm) -> None:
        self._fd = fd
        self._kvm = kvm

    @property
    def fd(self) -> int:
        return self._fd

    def check_extension(self, capability: int) -> int:
        """KVM_CHECK_EXTENSION on the VM fd: the answer for this VM (may differ from the host's)."""
        return _sys.ioctl(self._fd, _CHECK_EXTENSION, capability)

    def set_user_memory_region(
        self, slot: int, guest_phys_addr: int, memory_size: int, userspace_addr: int, flags: int = 0
    ) -> None:
        """KVM_SET_USER_MEMORY_REGION: back [gpa, gpa + size) with host memory; size 0 deletes."""
        region = abi.kvm_userspace_memory_region(
            slot=slot,
            flags=flags,
            guest_phys_addr=guest_phys_addr,
            memory_size=memory_size,
            userspace_addr=userspace_addr,
        )
        _sys.ioctl(self._fd, _SET_USER_MEMORY_REGION, region)

    def create_vcpu(self, vcpu_id: int) -> Vcpu:
        """KVM_CREATE_VCPU, then KVM_GET_VCPU_MMAP_SIZE on /dev/kvm and the kvm_run mmap.

        The size is asked per vCPU, after creating it, in the order QEMU uses.
        """
        fd = _sys.ioctl(self._fd, _CREATE_VCPU, vcpu_id)
        with ExitStack() as on_failure:
            on_failure.callback(_sys.close, fd)
            vcpu = Vcpu(fd, vcpu_id, _sys.ioctl(self._kvm.fd, _GET_VCPU_MMAP_SIZE))
            on_failure.pop_all()
        return vcpu

    def set_tss_addr(self, address: int) -> None:
        """KVM_SET_TSS_ADDR: three pages of guest-physical space Intel VMX needs for real mode."""
        _sys.ioctl(self._fd, _SET_TSS_ADDR, address)

    def set_identity_map_addr(self, address: int) -> None:
        """KVM_SET_IDENTITY_MAP_ADDR: one page for the EPT identity map (VMX without unrestricted
        guest)."""
        _sys.ioctl(self._fd, _SET_IDENTITY_MAP_ADDR, ctypes.c_uint64(address))

    def create_irqchip(self) -> None:
        """KVM_CREATE_IRQCHIP: in-kernel PIC, IOAPIC and per-vCPU LAPICs (before any vCPU)."""
        _sys.ioctl(self._fd, _CREATE_IRQCHIP)

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            _sys.close(fd)
