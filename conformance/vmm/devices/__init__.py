"""Emulated devices and the two buses the run loop dispatches exits to.

Port IO goes to an IoBus (dispatch by port range), MMIO to an MmioBus (dispatch by address
range). An access nobody claims behaves as unassigned space does in QEMU: port reads return
all ones, memory reads return zeros, and writes are dropped.
"""

from __future__ import annotations

from typing import Protocol


class PortDevice(Protocol):
    def read_port(self, offset: int, size: int) -> int:
        """The value a guest `in` of `size` bytes at base + offset reads."""

    def write_port(self, offset: int, size: int, value: int) -> None:
        """A guest `out` of `size` bytes at base + offset."""


class MmioDevice(Protocol):
    def read_mmio(self, offset: int, length: int) -> bytes:
        """The `length` bytes a guest load at base + offset reads."""

    def write_mmio(self, offset: int, data: bytes) -> None:
        """A guest store of `data` at base + offset."""


class BusConflictError(ValueError):
    """Two devices claimed overlapping ranges: a bug in the machine's wiring."""


class IoBus:
    """Port IO dispatch. A lookup is one dict access, because it runs once per IO exit."""

    def __init__(self) -> None:
        self._ports: dict[int, tuple[PortDevice, int]] = {}

    def register(self, first_port: int, count: int, device: PortDevice) -> None:
        ports = range(first_port, first_port + count)
        taken = [port for port in ports if port in self._ports]
        if taken:
            raise BusConflictError(f"ports {taken[0]:#x}.. are already claimed")
        for port in ports:
            self._ports[port] = (device, first_port)

    def read(self, port: int, size: int, count: int) -> bytes:
        """The bytes answering an IO in of `count` elements of `size` bytes (rep ins)."""
        target = self._ports.get(port)
        if target is None:
            return b"\xff" * (size * count)
        device, base = target
        return b"".join(
            device.read_port(port - base, size).to_bytes(size, "little") for _ in range(count)
        )

    def write(self, port: int, size: int, data: bytes) -> None:
        """An IO out; `data` holds one or more (rep outs) elements of `size` bytes."""
        target = self._ports.get(port)
        if target is None:
            return
        device, base = target
        for start in range(0, len(data), size):
            device.write_port(
                port - base, size, int.from_bytes(data[start : start + size], "little")
            )


class MmioBus:
    """MMIO dispatch over a handful of regions (a linear scan is cheaper than anything else)."""

    def __init__(self) -> None:
        self._regions: list[tuple[int, int, MmioDevice]] = []

    def register(self, base: int, size: int, device: MmioDevice) -> None:
        for other_base, other_size, _ in self._regions:
            if base < other_base + other_size and other_base < base + size:
                raise BusConflictError(f"MMIO {base:#x}+{size:#x} overlaps {other_base:#x}")
        self._regions.append((base, size, device))

    def read(self, address: int, length: int) -> bytes:
        for base, size, device in self._regions:
            if base <= address and address + length <= base + size:
                return device.read_mmio(address - base, length)
        return bytes(length)

    def write(self, address: int, data: bytes) -> None:
        for base, size, device in self._regions:
            if base <= address and address + len(data) <= base + size:
                device.write_mmio(address - base, data)
                return
