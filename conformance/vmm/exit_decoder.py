"""Decoding KVM_RUN exits from the vCPU's kvm_run page into the typed values of exits.py.

Decoding runs once per exit, so the hot reasons (IO, MMIO) read kvm_run through precompiled
struct.Struct unpackers whose offsets are taken from the generated ctypes layout, and identical
IO exits (a guest polling a status port, or the 100k POST-code writes of exits_100k) share one
interned object instead of building a new one each time. Layouts and reason numbers come from
the generated ABI.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable
from typing import Any

from conformance.abi import _generated as abi
from conformance.vmm.exits import (
    ApResetHoldExit,
    DebugExit,
    DirtyRingFullExit,
    ExceptionExit,
    Exit,
    FailEntryExit,
    HltExit,
    HypercallExit,
    HypervExit,
    InternalErrorExit,
    IntrExit,
    IoapicEoiExit,
    IoDirection,
    IoExit,
    IrqWindowOpenExit,
    MmioExit,
    NmiExit,
    NotifyExit,
    SetTprExit,
    ShutdownExit,
    SystemEventExit,
    TprAccessExit,
    UnknownExit,
    UnknownHardwareExit,
    X86BusLockExit,
    X86RdmsrExit,
    X86WrmsrExit,
    XenExit,
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
_KVM_EXIT_IO_OUT: int = abi.KVM_EXIT_IO_OUT
_IO_FIELDS = ("direction", "size", "port", "count", "data_offset")
# Reason -> KVM_EXIT_* name, to name the other architectures' exits that have no type here.
# KVM_EXIT_IO_*, KVM_EXIT_HYPERV_* and KVM_EXIT_XEN_* are payload sub-codes sharing the prefix.
_EXIT_NAMES: dict[int, str] = {
    value: name
    for name, value in vars(abi).items()
    if name.startswith("KVM_EXIT_")
    and not name.startswith(("KVM_EXIT_IO_", "KVM_EXIT_HYPERV_", "KVM_EXIT_XEN_"))
    and isinstance(value, int)
}

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


def _head_unpacker(run: Any, io_offset: int, io: struct.Struct) -> struct.Struct:
    """A Struct reading exit_reason, then kvm_run.io's fields: one call per exit instead of two.

    For reasons other than IO the io fields are another member's bytes, and go unused.
    """
    reason = type(run).exit_reason
    gap = io_offset - (reason.offset + reason.size)
    reason_code = _UNPACK_CODES[reason.size]
    return struct.Struct(f"<{reason.offset}x{reason_code}{gap}x{io.format.lstrip('<')}")


class ExitDecoder:
    """Reads the exit KVM_RUN left in a mapped kvm_run page, and writes answers back into it."""

    def __init__(self, run_address: int, run_size: int) -> None:
        run: Any = abi.kvm_run.from_address(run_address)
        self._run = run
        # ctypes exports its buffer as "<B", which slice assignment from bytes refuses.
        self._page = memoryview((ctypes.c_uint8 * run_size).from_address(run_address)).cast("B")
        self._io_offset, self._io = _unpacker(run, "io", _IO_FIELDS)
        self._head = _head_unpacker(run, self._io_offset, self._io)
        self._mmio_offset, self._mmio = _unpacker(
            run, "mmio", ("phys_addr", "data", "len", "is_write")
        )
        self._interned_io: dict[tuple[tuple[int, ...], bytes], IoExit] = {}
        self._decoders: dict[int, Callable[[], Exit]] = {
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
            abi.KVM_EXIT_HYPERV: self._decode_hyperv,
            abi.KVM_EXIT_XEN: self._decode_xen,
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
        # The hot exit is decoded inline, from the one unpack that also read the reason.
        head = self._head.unpack_from(self._page)
        reason, direction, size, port, count, data_offset = head
        if reason != _KVM_EXIT_IO:
            decoder = self._decoders.get(reason)
            return UnknownExit(reason, _EXIT_NAMES.get(reason)) if decoder is None else decoder()
        data = (
            self._page[data_offset : data_offset + size * count].tobytes()
            if direction == _KVM_EXIT_IO_OUT
            else b""
        )
        key = (head, data)
        interned = self._interned_io.get(key)
        if interned is None:
            if len(self._interned_io) >= _IO_INTERN_LIMIT:
                self._interned_io.clear()
            interned = IoExit(_DIRECTIONS[direction], size, port, count, data)
            self._interned_io[key] = interned
        return interned

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

    def _decode_hyperv(self) -> HypervExit:
        hyperv = self._run.hyperv
        return HypervExit(hyperv.type, bytes(hyperv.u))

    def _decode_xen(self) -> XenExit:
        xen = self._run.xen
        return XenExit(xen.type, bytes(xen.u))


def _constant(exit_value: Exit) -> Callable[[], Exit]:
    return lambda: exit_value
