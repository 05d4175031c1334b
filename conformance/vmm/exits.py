"""KVM_RUN exits as typed values (exit_decoder.py reads them from the vCPU's kvm_run page).

One frozen dataclass per x86 exit reason <linux/kvm.h> defines; a reason without one (the other
architectures', or one newer than the header) decodes to UnknownExit. Field names follow the C
names of the kvm_run union member.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from conformance.abi import _generated as abi


class IoDirection(enum.IntEnum):
    IN = abi.KVM_EXIT_IO_IN
    OUT = abi.KVM_EXIT_IO_OUT


@dataclass(frozen=True, slots=True)
class UnknownHardwareExit:
    """KVM_EXIT_UNKNOWN: the hardware exited for a reason KVM does not handle."""

    hardware_exit_reason: int


@dataclass(frozen=True, slots=True)
class ExceptionExit:
    exception: int
    error_code: int


@dataclass(frozen=True, slots=True)
class IoExit:
    """Port IO. `data` holds size * count bytes for OUT, and is empty for IN (see answer_io_in)."""

    direction: IoDirection
    size: int
    port: int
    count: int
    data: bytes


@dataclass(frozen=True, slots=True)
class HypercallExit:
    nr: int
    args: tuple[int, ...]
    longmode: int


@dataclass(frozen=True, slots=True)
class DebugExit:
    exception: int
    pc: int
    dr6: int
    dr7: int


@dataclass(frozen=True, slots=True)
class HltExit:
    pass


@dataclass(frozen=True, slots=True)
class MmioExit:
    """A guest access to a gpa no memory slot backs. `data` is len bytes (empty for a read)."""

    phys_addr: int
    len: int
    is_write: bool
    data: bytes


@dataclass(frozen=True, slots=True)
class IrqWindowOpenExit:
    pass


@dataclass(frozen=True, slots=True)
class ShutdownExit:
    """The guest triple-faulted (or otherwise asked the CPU to shut down)."""


@dataclass(frozen=True, slots=True)
class FailEntryExit:
    hardware_entry_failure_reason: int
    cpu: int


@dataclass(frozen=True, slots=True)
class IntrExit:
    """KVM_RUN returned EINTR: a signal arrived, or immediate_exit was set."""


@dataclass(frozen=True, slots=True)
class SetTprExit:
    pass


@dataclass(frozen=True, slots=True)
class TprAccessExit:
    rip: int
    is_write: bool


@dataclass(frozen=True, slots=True)
class NmiExit:
    pass


@dataclass(frozen=True, slots=True)
class InternalErrorExit:
    """KVM could not go on (e.g. suberror KVM_INTERNAL_ERROR_EMULATION); data has ndata words."""

    suberror: int
    data: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class SystemEventExit:
    """Shutdown/reset/crash requested through firmware interfaces; `type` is KVM_SYSTEM_EVENT_*."""

    type: int
    data: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class IoapicEoiExit:
    vector: int


@dataclass(frozen=True, slots=True)
class X86RdmsrExit:
    reason: int
    index: int


@dataclass(frozen=True, slots=True)
class X86WrmsrExit:
    reason: int
    index: int
    data: int


@dataclass(frozen=True, slots=True)
class DirtyRingFullExit:
    pass


@dataclass(frozen=True, slots=True)
class ApResetHoldExit:
    pass


@dataclass(frozen=True, slots=True)
class X86BusLockExit:
    pass


@dataclass(frozen=True, slots=True)
class NotifyExit:
    flags: int


@dataclass(frozen=True, slots=True)
class HypervExit:
    """KVM_EXIT_HYPERV: a Hyper-V SynIC, hypercall or debugger event; `type` selects the member
    of kvm_hyperv_exit's union, whose bytes `payload` holds as the kernel wrote them."""

    type: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class XenExit:
    """KVM_EXIT_XEN: a Xen hypercall to emulate; `payload` is kvm_xen_exit's union as written."""

    type: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class UnknownExit:
    """An exit reason this decoder has no type for: `reason` is the raw kvm_run.exit_reason, and
    `name` its KVM_EXIT_* name where the header has one (another architecture's exit) or None."""

    reason: int
    name: str | None = None


Exit = (
    UnknownHardwareExit
    | ExceptionExit
    | IoExit
    | HypercallExit
    | DebugExit
    | HltExit
    | MmioExit
    | IrqWindowOpenExit
    | ShutdownExit
    | FailEntryExit
    | IntrExit
    | SetTprExit
    | TprAccessExit
    | NmiExit
    | InternalErrorExit
    | SystemEventExit
    | IoapicEoiExit
    | X86RdmsrExit
    | X86WrmsrExit
    | DirtyRingFullExit
    | ApResetHoldExit
    | X86BusLockExit
    | NotifyExit
    | HypervExit
    | XenExit
    | UnknownExit
)
