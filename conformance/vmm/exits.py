"""KVM_RUN exits as typed values, decoded from the vCPU's kvm_run page.

One frozen dataclass per x86 exit reason <linux/kvm.h> defines; a reason without one (the other
architectures', or one newer than the header) decodes to UnknownExit. Field names follow the C
names of the kvm_run union member. Layouts and reason numbers come from the generated ABI.

Decoding runs once per exit, so the hot reasons (IO, MMIO) read kvm_run through precompiled
struct.Struct unpackers whose offsets are taken from the generated ctypes layout, and identical
IO exits (a guest polling a status port, or the 100k POST-code writes of exits_100k) share one
interned object instead of building a new one each time.
"""

from __future__ import annotations

import ctypes
import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
class UnknownExit:
    """An exit reason this decoder has no type for; `reason` is the raw kvm_run.exit_reason."""

    reason: int


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
    | UnknownExit
)

# Exits without payload carry nothing to decode; one instance each is enough.
_PAYLOADLESS: dict[int, Exit] = {
    abi.KVM_EXIT_HLT: HltExit(),
    abi.KVM_EXIT_IRQ_WINDOW_OPEN: IrqWindowOpenExit(),
    abi.KVM_EXIT_SHUTDOWN: ShutdownExit(),
    abi.KVM_EXIT_INTR: IntrExit(),
    abi.KVM_EXIT_SET_TPR: SetTprExit(),
    abi.KVM_EXIT_NMI: NmiExit(),
    abi.KVM_EXIT_DIRTY_RING_FULL: DirtyRingFullExit(),
    abi.KVM_EXIT_AP_RESET_HOLD: ApResetHoldExit(),
    abi.KVM_EXIT_X86_BUS_LOCK: X86BusLockExit(),
}

_DIRECTIONS = {member.value: member for member in IoDirection}
_KVM_EXIT_IO: int = abi.KVM_EXIT_IO

# Interned IO exits are bounded so that a guest writing ever-new values cannot grow memory.
_IO_INTERN_LIMIT = 4096

_UNPACK_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}


def _member_offset(run: Any, member: str) -> int:
    """Offset of a kvm_run union member, measured rather than named: the union is anonymous."""
    return ctypes.addressof(getattr(run, member)) - ctypes.addressof(run)


def _unpacker(run: Any, member: str, fields: tuple[str, ...]) -> tuple[int, struct.Struct]:
    """(offset of `member` in kvm_run, a Struct reading `fields` of it in order)."""
    layout = type(getattr(run, member))
    pieces = ["<"]
    position = 0
    for name in fields:
        field = getattr(layout, name)
        pieces.append("x" * (field.offset - position))
        field_type = dict(layout._fields_)[name]
        is_bytes = issubclass(field_type, ctypes.Array)
        pieces.append(f"{field.size}s" if is_bytes else _UNPACK_CODES[field.size])
        position = field.offset + field.size
    return _member_offset(run, member), struct.Struct("".join(pieces))


class ExitDecoder:
    """Reads the exit KVM_RUN left in a mapped kvm_run page, and writes answers back into it."""

    def __init__(self, run_address: int, run_size: int) -> None:
        run: Any = abi.kvm_run.from_address(run_address)
        self._run = run
        # ctypes exports its buffer as "<B", which slice assignment from bytes refuses.
        self._page = memoryview((ctypes.c_uint8 * run_size).from_address(run_address)).cast("B")
        self._io_offset, self._io = _unpacker(
            run, "io", ("direction", "size", "port", "count", "data_offset")
        )
        self._mmio_offset, self._mmio = _unpacker(
            run, "mmio", ("phys_addr", "data", "len", "is_write")
        )
        self._interned_io: dict[tuple[tuple[int, ...], bytes], IoExit] = {}
        self._decoders: dict[int, Callable[[], Exit]] = {
            abi.KVM_EXIT_IO: self._decode_io,
            abi.KVM_EXIT_MMIO: self._decode_mmio,
            abi.KVM_EXIT_UNKNOWN: self._decode_unknown_hardware,
            abi.KVM_EXIT_EXCEPTION: self._decode_exception,
            abi.KVM_EXIT_HYPERCALL: self._decode_hypercall,
            abi.KVM_EXIT_DEBUG: self._decode_debug,
            abi.KVM_EXIT_FAIL_ENTRY: self._decode_fail_entry,
            abi.KVM_EXIT_TPR_ACCESS: self._decode_tpr_access,
            abi.KVM_EXIT_INTERNAL_ERROR: self._decode_internal_error,
            abi.KVM_EXIT_SYSTEM_EVENT: self._decode_system_event,
            abi.KVM_EXIT_IOAPIC_EOI: self._decode_ioapic_eoi,
            abi.KVM_EXIT_X86_RDMSR: self._decode_rdmsr,
            abi.KVM_EXIT_X86_WRMSR: self._decode_wrmsr,
            abi.KVM_EXIT_NOTIFY: self._decode_notify,
        }
        for reason, singleton in _PAYLOADLESS.items():
            self._decoders[reason] = _constant(singleton)

    @property
    def immediate_exit(self) -> bool:
        return bool(self._run.immediate_exit)

    @immediate_exit.setter
    def immediate_exit(self, value: bool) -> None:
        self._run.immediate_exit = int(value)

    def decode(self) -> Exit:
        reason: int = self._run.exit_reason
        if reason == _KVM_EXIT_IO:  # the hot exit skips the table lookup
            return self._decode_io()
        decoder = self._decoders.get(reason)
        return UnknownExit(reason) if decoder is None else decoder()

    def answer_io_in(self, data: bytes) -> None:
        """Put the bytes an IO-in exit reads where KVM takes them on the next KVM_RUN."""
        _, size, _, count, data_offset = self._io.unpack_from(self._page, self._io_offset)
        if len(data) != size * count:
            raise ValueError(f"an IO in of {count} x {size} bytes needs {size * count} bytes")
        self._page[data_offset : data_offset + len(data)] = data

    def answer_mmio_read(self, data: bytes) -> None:
        """Put the bytes an MMIO read returns into kvm_run.mmio.data for the next KVM_RUN."""
        length: int = self._run.mmio.len
        if len(data) != length:
            raise ValueError(f"an MMIO read of {length} bytes needs {length} bytes")
        data_offset = self._mmio_offset + type(self._run.mmio).data.offset
        self._page[data_offset : data_offset + length] = data

    def release(self) -> None:
        """Drop every view of the page; the caller unmaps it next."""
        self._page.release()
        del self._run

    def _decode_io(self) -> IoExit:
        header = self._io.unpack_from(self._page, self._io_offset)
        direction, size, _, count, data_offset = header
        data = (
            self._page[data_offset : data_offset + size * count].tobytes()
            if direction == abi.KVM_EXIT_IO_OUT
            else b""
        )
        key = (header, data)
        interned = self._interned_io.get(key)
        if interned is None:
            if len(self._interned_io) >= _IO_INTERN_LIMIT:
                self._interned_io.clear()
            interned = IoExit(_DIRECTIONS[direction], size, header[2], count, data)
            self._interned_io[key] = interned
        return interned

    def _decode_mmio(self) -> MmioExit:
        phys_addr, data, length, is_write = self._mmio.unpack_from(self._page, self._mmio_offset)
        return MmioExit(phys_addr, length, bool(is_write), data[:length] if is_write else b"")

    def _decode_unknown_hardware(self) -> UnknownHardwareExit:
        return UnknownHardwareExit(self._run.hw.hardware_exit_reason)

    def _decode_exception(self) -> ExceptionExit:
        return ExceptionExit(self._run.ex.exception, self._run.ex.error_code)

    def _decode_hypercall(self) -> HypercallExit:
        call = self._run.hypercall
        return HypercallExit(call.nr, tuple(call.args), call.longmode)

    def _decode_debug(self) -> DebugExit:
        arch = self._run.debug.arch
        return DebugExit(arch.exception, arch.pc, arch.dr6, arch.dr7)

    def _decode_fail_entry(self) -> FailEntryExit:
        failure = self._run.fail_entry
        return FailEntryExit(failure.hardware_entry_failure_reason, failure.cpu)

    def _decode_tpr_access(self) -> TprAccessExit:
        return TprAccessExit(self._run.tpr_access.rip, bool(self._run.tpr_access.is_write))

    def _decode_internal_error(self) -> InternalErrorExit:
        internal = self._run.internal
        count = min(internal.ndata, len(internal.data))
        return InternalErrorExit(internal.suberror, tuple(internal.data[:count]))

    def _decode_system_event(self) -> SystemEventExit:
        event = self._run.system_event
        count = min(event.ndata, len(event.data))
        return SystemEventExit(event.type, tuple(event.data[:count]))

    def _decode_ioapic_eoi(self) -> IoapicEoiExit:
        return IoapicEoiExit(self._run.eoi.vector)

    def _decode_rdmsr(self) -> X86RdmsrExit:
        return X86RdmsrExit(self._run.msr.reason, self._run.msr.index)

    def _decode_wrmsr(self) -> X86WrmsrExit:
        msr = self._run.msr
        return X86WrmsrExit(msr.reason, msr.index, msr.data)

    def _decode_notify(self) -> NotifyExit:
        return NotifyExit(self._run.notify.flags)


def _constant(exit_value: Exit) -> Callable[[], Exit]:
    return lambda: exit_value
