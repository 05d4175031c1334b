"""A 16550-style UART: enough of one for a guest to print, with what it sends collected.

Registers at base + 0..7 as on a PC's COM1 (0x3f8). The transmitter is always ready (LSR
THRE|TEMT), because bytes leave instantly into `output`. There is no receive side beyond
loopback mode (MCR bit 4), where the bytes a guest sends come back through RBR instead of
going out, as a driver's loopback self-test expects. Interrupts are not wired: the machine has
no interrupt controller, so IER and IIR only keep and report their state.
"""

from __future__ import annotations

from collections import deque

COM1_PORT = 0x3F8
REGISTER_COUNT = 8

# Register offsets; with LCR.DLAB set, offsets 0 and 1 are the divisor latch instead.
_THR_RBR_DLL = 0
_IER_DLM = 1
_IIR_FCR = 2
_LCR = 3
_MCR = 4
_LSR = 5
_MSR = 6
_SCR = 7

_LCR_DLAB = 0x80
_MCR_LOOPBACK = 0x10
_FCR_FIFO_ENABLE = 0x01
_IIR_NO_INTERRUPT = 0x01
_IIR_FIFOS_ENABLED = 0xC0
_LSR_DATA_READY = 0x01
_LSR_THR_EMPTY = 0x20
_LSR_TRANSMITTER_EMPTY = 0x40
# Carrier detect, data set ready and clear to send, as QEMU's serial reports at reset.
_MSR_LINES_UP = 0x80 | 0x20 | 0x10
_IER_MASK = 0x0F


class Serial16550:
    """A UART the IoBus dispatches to (register it for REGISTER_COUNT ports)."""

    def __init__(self) -> None:
        self._output = bytearray()
        self._loopback_received: deque[int] = deque()
        self._divisor = 12  # 9600 baud from the 1.8432 MHz clock, the PC BIOS default
        self._ier = 0
        self._fcr = 0
        self._lcr = 0
        self._mcr = 0
        self._scr = 0

    @property
    def output(self) -> bytes:
        """Every byte the guest transmitted, in order."""
        return bytes(self._output)

    @property
    def divisor(self) -> int:
        return self._divisor

    def read_port(self, offset: int, size: int) -> int:
        dlab = self._lcr & _LCR_DLAB
        if offset == _THR_RBR_DLL:
            if dlab:
                return self._divisor & 0xFF
            return self._loopback_received.popleft() if self._loopback_received else 0
        if offset == _IER_DLM:
            return self._divisor >> 8 if dlab else self._ier
        if offset == _IIR_FCR:
            fifos = _IIR_FIFOS_ENABLED if self._fcr & _FCR_FIFO_ENABLE else 0
            return _IIR_NO_INTERRUPT | fifos
        if offset == _LCR:
            return self._lcr
        if offset == _MCR:
            return self._mcr
        if offset == _LSR:
            ready = _LSR_DATA_READY if self._loopback_received else 0
            return _LSR_THR_EMPTY | _LSR_TRANSMITTER_EMPTY | ready
        if offset == _MSR:
            return _MSR_LINES_UP
        return self._scr

    def write_port(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        dlab = self._lcr & _LCR_DLAB
        if offset == _THR_RBR_DLL:
            if dlab:
                self._divisor = (self._divisor & 0xFF00) | value
            elif self._mcr & _MCR_LOOPBACK:
                self._loopback_received.append(value)
            else:
                self._output.append(value)
        elif offset == _IER_DLM:
            if dlab:
                self._divisor = (self._divisor & 0x00FF) | (value << 8)
            else:
                self._ier = value & _IER_MASK
        elif offset == _IIR_FCR:
            self._fcr = value
        elif offset == _LCR:
            self._lcr = value
        elif offset == _MCR:
            self._mcr = value
        elif offset == _SCR:
            self._scr = value
        # LSR and MSR are read-only; writes to them are ignored, as on the real part.
