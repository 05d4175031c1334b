"""The VMM core's devices and buses, driven directly (no KVM needed)."""

from __future__ import annotations

import pytest

from conformance.vmm.devices import BusConflictError, IoBus, MmioBus
from conformance.vmm.devices.debug_exit import DebugExitPort, DebugExitRequested
from conformance.vmm.devices.serial import COM1_PORT, REGISTER_COUNT, Serial16550
from conformance.vmm.devices.vga_text import TextScreen

THR, IER, IIR_FCR, LCR, MCR, LSR, MSR, SCR = range(8)


def test_serial_collects_transmitted_bytes_and_reports_transmitter_ready() -> None:
    serial = Serial16550()
    for byte in b"hi\n":
        serial.write_port(THR, 1, byte)
    assert serial.output == b"hi\n"
    assert serial.read_port(LSR, 1) == 0x60  # THRE | TEMT, no data ready


def test_serial_divisor_latch_shadows_thr_and_ier_while_dlab_is_set() -> None:
    serial = Serial16550()
    serial.write_port(LCR, 1, 0x83)  # DLAB + 8N1
    serial.write_port(THR, 1, 0x01)
    serial.write_port(IER, 1, 0x00)
    assert serial.divisor == 1  # 115200 baud
    assert (serial.read_port(THR, 1), serial.read_port(IER, 1)) == (0x01, 0x00)
    serial.write_port(LCR, 1, 0x03)
    serial.write_port(IER, 1, 0xFF)
    assert serial.read_port(IER, 1) == 0x0F  # only the four defined enable bits stick
    assert serial.output == b""


def test_serial_loopback_returns_bytes_through_rbr_instead_of_sending_them() -> None:
    serial = Serial16550()
    serial.write_port(MCR, 1, 0x10)
    serial.write_port(THR, 1, 0x5A)
    assert serial.read_port(LSR, 1) & 0x01
    assert serial.read_port(THR, 1) == 0x5A
    assert not serial.read_port(LSR, 1) & 0x01
    assert serial.output == b""


def test_serial_identification_and_scratch_registers() -> None:
    serial = Serial16550()
    assert serial.read_port(IIR_FCR, 1) == 0x01
    serial.write_port(IIR_FCR, 1, 0x07)
    assert serial.read_port(IIR_FCR, 1) == 0xC1
    serial.write_port(SCR, 1, 0xA5)
    assert serial.read_port(SCR, 1) == 0xA5
    assert serial.read_port(MSR, 1) == 0xB0


def test_io_bus_dispatches_by_port_range_with_offsets() -> None:
    bus = IoBus()
    serial = Serial16550()
    bus.register(COM1_PORT, REGISTER_COUNT, serial)
    bus.write(COM1_PORT, 1, b"A")
    bus.write(COM1_PORT, 1, b"BC")  # rep outsb: two elements to the same port
    assert serial.output == b"ABC"
    assert bus.read(COM1_PORT + LSR, 1, 1) == b"\x60"
    assert bus.read(COM1_PORT + LSR, 1, 3) == b"\x60\x60\x60"


def test_io_bus_unassigned_ports_read_all_ones_and_drop_writes() -> None:
    bus = IoBus()
    bus.write(0x80, 1, b"\x00")
    assert bus.read(0x80, 2, 1) == b"\xff\xff"


def test_io_bus_refuses_overlapping_devices() -> None:
    bus = IoBus()
    bus.register(COM1_PORT, REGISTER_COUNT, Serial16550())
    with pytest.raises(BusConflictError):
        bus.register(COM1_PORT + 7, 1, DebugExitPort())


def test_debug_exit_reports_qemu_status_for_the_written_value() -> None:
    bus = IoBus()
    bus.register(0xF4, 4, DebugExitPort())
    with pytest.raises(DebugExitRequested) as request:
        bus.write(0xF4, 4, (0x10).to_bytes(4, "little"))
    assert request.value.status == 33
    with pytest.raises(DebugExitRequested) as request:
        bus.write(0xF6, 1, b"\x00")
    assert request.value.status == 1


def test_mmio_bus_text_screen_and_unassigned_memory() -> None:
    bus = MmioBus()
    screen = TextScreen()
    bus.register(0xB8000, 0x8000, screen)
    for column, character in enumerate(b"ok"):
        bus.write(0xB8000 + 2 * column, bytes([character, 0x07]))
    bus.write(0xB8000 + 160, b"x\x07")
    assert screen.text() == "ok\nx"
    assert bus.read(0xB8000, 2) == b"o\x07"
    assert bus.read(0xA0000, 4) == b"\x00" * 4
    with pytest.raises(BusConflictError):
        bus.register(0xBFFFF, 2, TextScreen())
