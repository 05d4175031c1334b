"""Encode and decode ioctl request numbers (the kernel's _IOC macro, asm-generic layout).

x86-64 uses the asm-generic layout: bits 0-7 nr, 8-15 type, 16-29 argument size, 30-31 direction.
"""

from __future__ import annotations

from dataclasses import dataclass

NR_BITS, TYPE_BITS, SIZE_BITS, DIRECTION_BITS = 8, 8, 14, 2
NR_SHIFT = 0
TYPE_SHIFT = NR_SHIFT + NR_BITS
SIZE_SHIFT = TYPE_SHIFT + TYPE_BITS
DIRECTION_SHIFT = SIZE_SHIFT + SIZE_BITS

# Direction bits, from the caller's point of view as in the kernel: WRITE = userspace writes
# (the kernel reads the argument), READ = userspace reads (the kernel writes the argument).
IOC_NONE, IOC_WRITE, IOC_READ = 0, 1, 2
IOC_READ_WRITE = IOC_READ | IOC_WRITE


@dataclass(frozen=True)
class IocFields:
    direction: int
    type: int
    nr: int
    size: int


def _check_range(label: str, value: int, bits: int) -> None:
    if not 0 <= value < 1 << bits:
        raise ValueError(f"ioctl {label} {value} does not fit in {bits} bits")


def encode(direction: int, ioctl_type: int, nr: int, size: int) -> int:
    """The request number _IOC(direction, type, nr, size) would produce."""
    _check_range("direction", direction, DIRECTION_BITS)
    _check_range("type", ioctl_type, TYPE_BITS)
    _check_range("nr", nr, NR_BITS)
    _check_range("size", size, SIZE_BITS)
    return (
        direction << DIRECTION_SHIFT
        | ioctl_type << TYPE_SHIFT
        | nr << NR_SHIFT
        | size << SIZE_SHIFT
    )


def decode(number: int) -> IocFields:
    """Split a request number into its _IOC fields."""
    _check_range("number", number, DIRECTION_SHIFT + DIRECTION_BITS)
    return IocFields(
        direction=number >> DIRECTION_SHIFT & ((1 << DIRECTION_BITS) - 1),
        type=number >> TYPE_SHIFT & ((1 << TYPE_BITS) - 1),
        nr=number >> NR_SHIFT & ((1 << NR_BITS) - 1),
        size=number >> SIZE_SHIFT & ((1 << SIZE_BITS) - 1),
    )
