"""The vCPU fd: register state, CPUID, MSRs and KVM_RUN with its mmapped kvm_run page."""

from __future__ import annotations

import errno
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from typing import Any

from conformance.abi import _generated as abi
from conformance.abi.ioctls import by_name
from conformance.vmm import _sys
from conformance.vmm._closing import Closing
from conformance.vmm._varlen import sized_argument
from conformance.vmm.exit_decoder import ExitDecoder
from conformance.vmm.exits import Exit, IntrExit

_RUN = by_name("KVM_RUN")
_GET_REGS = by_name("KVM_GET_REGS")
_SET_REGS = by_name("KVM_SET_REGS")
_GET_SREGS = by_name("KVM_GET_SREGS")
_SET_SREGS = by_name("KVM_SET_SREGS")
_SET_CPUID2 = by_name("KVM_SET_CPUID2")
_GET_MSRS = by_name("KVM_GET_MSRS")
_SET_MSRS = by_name("KVM_SET_MSRS")

_INTERRUPTED = IntrExit()


class Vcpu(Closing):
    """A vCPU fd and its kvm_run mapping, created by Vm.create_vcpu."""

    def __init__(self, fd: int, vcpu_id: int, run_size: int) -> None:
        self._fd = fd
        self.vcpu_id = vcpu_id
        self._run_size = run_size
        self._run_address = _sys.map_shared(fd, run_size)
        with ExitStack() as on_failure:
            on_failure.callback(_sys.unmap, self._run_address, run_size)
            self._exits = ExitDecoder(self._run_address, run_size)
            on_failure.pop_all()
        # Looked up once: run() is the per-exit path.
        self._enter = _sys.prepared_ioctl(fd, _RUN)
        self._decode = self._exits.decode

    @property
    def fd(self) -> int:
        return self._fd

    def run(self) -> Exit:
        """KVM_RUN until the next exit to userspace, decoded from kvm_run.

        EINTR (a signal, or immediate_exit) is an IntrExit, not an error; the immediate_exit
        request it answered is cleared so that the next run enters the guest again.
        """
        if self._enter() == -1:
            error = _sys.last_error(_RUN)
            if error.errno != errno.EINTR:
                raise error
            self._exits.immediate_exit = False
            return _INTERRUPTED
        return self._decode()

    def request_immediate_exit(self) -> None:
        """Make the current or next KVM_RUN return EINTR at once; safe in a signal handler."""
        self._exits.immediate_exit = True

    def answer_io_in(self, data: bytes) -> None:
        """The bytes the guest's pending IO in reads, delivered by the next run()."""
        self._exits.answer_io_in(data)

    def answer_mmio_read(self, data: bytes) -> None:
        """The bytes the guest's pending MMIO read returns, delivered by the next run()."""
        self._exits.answer_mmio_read(data)

    def get_regs(self) -> Any:
        """KVM_GET_REGS: the general-purpose registers, RIP and RFLAGS as a kvm_regs."""
        regs = abi.kvm_regs()
        _sys.ioctl(self._fd, _GET_REGS, regs)
        return regs

    def set_regs(self, regs: Any) -> None:
        """KVM_SET_REGS."""
        _sys.ioctl(self._fd, _SET_REGS, regs)

    def get_sregs(self) -> Any:
        """KVM_GET_SREGS: segments, descriptor tables, control registers and EFER (kvm_sregs)."""
        sregs = abi.kvm_sregs()
        _sys.ioctl(self._fd, _GET_SREGS, sregs)
        return sregs

    def set_sregs(self, sregs: Any) -> None:
        """KVM_SET_SREGS."""
        _sys.ioctl(self._fd, _SET_SREGS, sregs)

    def set_cpuid2(self, entries: Sequence[Any]) -> None:
        """KVM_SET_CPUID2: the CPUID leaves the guest sees (kvm_cpuid_entry2 items)."""
        buffer = sized_argument(_SET_CPUID2, abi.kvm_cpuid_entry2, len(entries))
        for slot, entry in enumerate(entries):
            buffer.items[slot] = entry
        _sys.ioctl(self._fd, _SET_CPUID2, buffer)

    def get_msrs(self, indices: Sequence[int]) -> dict[int, int]:
        """KVM_GET_MSRS: values of the given MSRs. KVM stops at the first MSR it cannot read,
        so the result holds only the MSRs before that one."""
        buffer = sized_argument(_GET_MSRS, abi.kvm_msr_entry, len(indices))
        for slot, index in enumerate(indices):
            buffer.items[slot].index = index
        read = _sys.ioctl(self._fd, _GET_MSRS, buffer)
        return {entry.index: entry.data for entry in buffer.items[:read]}

    def set_msrs(self, values: Mapping[int, int]) -> int:
        """KVM_SET_MSRS: returns how many were written; KVM stops at the first it refuses."""
        buffer = sized_argument(_SET_MSRS, abi.kvm_msr_entry, len(values))
        for slot, (index, value) in enumerate(values.items()):
            buffer.items[slot].index = index
            buffer.items[slot].data = value
        return _sys.ioctl(self._fd, _SET_MSRS, buffer)

    def close(self) -> None:
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        # The prepared KVM_RUN holds the fd number, which the next open() may reuse.
        self._enter = _sys.prepared_ioctl(-1, _RUN)
        # The fd is closed even if the unmap fails; the views go before the mapping does.
        with ExitStack() as cleanup:
            cleanup.callback(_sys.close, fd)
            cleanup.callback(_sys.unmap, self._run_address, self._run_size)
            self._exits.release()
