"""The system fd: /dev/kvm itself, and the ioctls that ask the host what KVM supports."""

from __future__ import annotations

import ctypes
import errno
from typing import Any

from conformance.abi import _generated as abi
from conformance.abi.ioctls import by_name
from conformance.model.errors import KvmError
from conformance.vmm import _sys
from conformance.vmm._closing import Closing
from conformance.vmm._varlen import sized_argument
from conformance.vmm.vm import Vm

_GET_API_VERSION = by_name("KVM_GET_API_VERSION")
_CHECK_EXTENSION = by_name("KVM_CHECK_EXTENSION")
_GET_VCPU_MMAP_SIZE = by_name("KVM_GET_VCPU_MMAP_SIZE")
_GET_SUPPORTED_CPUID = by_name("KVM_GET_SUPPORTED_CPUID")
_GET_MSR_INDEX_LIST = by_name("KVM_GET_MSR_INDEX_LIST")
_CREATE_VM = by_name("KVM_CREATE_VM")

# KVM answers E2BIG while the buffer is too small; QEMU grows it the same way.
_FIRST_CPUID_CAPACITY = 64
_MAX_CPUID_CAPACITY = 4096


class Kvm(Closing):
    """An open /dev/kvm. Closing it does not end VMs created from it (they hold their own fd)."""

    def __init__(self) -> None:
        self._fd = _sys.open_kvm()

    @property
    def fd(self) -> int:
        return self._fd

    def api_version(self) -> int:
        """KVM_GET_API_VERSION: 12 on every kernel since 2.6.22."""
        return _sys.ioctl(self._fd, _GET_API_VERSION)

    def check_extension(self, capability: int) -> int:
        """KVM_CHECK_EXTENSION: 0 when unsupported, else 1 or a capability-specific value."""
        return _sys.ioctl(self._fd, _CHECK_EXTENSION, capability)

    def vcpu_mmap_size(self) -> int:
        """KVM_GET_VCPU_MMAP_SIZE: how many bytes of a vCPU fd to mmap for kvm_run."""
        return _sys.ioctl(self._fd, _GET_VCPU_MMAP_SIZE)

    def supported_cpuid(self) -> list[Any]:
        """KVM_GET_SUPPORTED_CPUID: the kvm_cpuid_entry2 list KVM can expose to a guest."""
        capacity = _FIRST_CPUID_CAPACITY
        while True:
            buffer = sized_argument(_GET_SUPPORTED_CPUID, abi.kvm_cpuid_entry2, capacity)
            try:
                _sys.ioctl(self._fd, _GET_SUPPORTED_CPUID, buffer)
            except KvmError as error:
                if error.errno != errno.E2BIG or capacity >= _MAX_CPUID_CAPACITY:
                    raise
                capacity *= 2
                continue
            return [_copy(entry) for entry in buffer.items[: buffer.nent]]

    def msr_index_list(self) -> tuple[int, ...]:
        """KVM_GET_MSR_INDEX_LIST: the MSRs KVM saves and restores for a vCPU."""
        probe = sized_argument(_GET_MSR_INDEX_LIST, ctypes.c_uint32, 0)
        try:
            _sys.ioctl(self._fd, _GET_MSR_INDEX_LIST, probe)
        except KvmError as error:
            # With room for no index, KVM answers E2BIG and writes the count it needs.
            if error.errno != errno.E2BIG:
                raise
        buffer = sized_argument(_GET_MSR_INDEX_LIST, ctypes.c_uint32, probe.nmsrs)
        _sys.ioctl(self._fd, _GET_MSR_INDEX_LIST, buffer)
        return tuple(buffer.items[: buffer.nmsrs])

    def create_vm(self, machine_type: int = 0) -> Vm:
        """KVM_CREATE_VM: a new VM with its own fd."""
        return Vm(_sys.ioctl(self._fd, _CREATE_VM, machine_type), self)

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            _sys.close(fd)


def _copy(entry: Any) -> Any:
    """A kvm_cpuid_entry2 that owns its bytes, so the list outlives the ioctl buffer."""
    return type(entry).from_buffer_copy(entry)
