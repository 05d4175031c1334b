"""What each guest image is: how the VMM loads and enters it, and how it is assembled.

One table serves both the runtime registry (``conformance.vmm.guests``) and the build script
(``build.py``), so a guest's load address is written down once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from conformance.model.errors import ConformanceError

Mode = Literal["real", "long", "reset-vector"]


class UnknownGuestError(ConformanceError):
    """A guest name that has no image in this package."""


class GuestBuildError(ConformanceError):
    """A guest could not be assembled: missing toolchain, assembler error or bad symbol."""


@dataclass(frozen=True)
class GuestSpec:
    """How one guest is loaded, entered and linked.

    ``entry`` is the guest-physical address of the first instruction: CS base + IP in real
    mode, RIP (identity-mapped) in long mode, and the architectural reset address 0xfffffff0
    for the reset vector.  ``link_address`` is what the image's labels are relative to.
    """

    name: str
    mode: Mode
    load_gpa: int
    entry: int
    link_address: int
    alias_gpas: tuple[int, ...] = ()


_LOW_LOAD_GPA = 0x1000
# QEMU and a PC chipset decode the BIOS ROM just below 1 MiB and just below 4 GiB.
_BIOS_LOW_GPA = 0xF0000
_BIOS_HIGH_GPA = 0xFFFF0000
_RESET_ADDRESS = 0xFFFFFFF0

GUESTS: Mapping[str, GuestSpec] = {
    spec.name: spec
    for spec in (
        GuestSpec("hello", "real", _LOW_LOAD_GPA, _LOW_LOAD_GPA, _LOW_LOAD_GPA),
        GuestSpec("hello_long", "long", _LOW_LOAD_GPA, _LOW_LOAD_GPA, _LOW_LOAD_GPA),
        GuestSpec("exits_100k", "real", _LOW_LOAD_GPA, _LOW_LOAD_GPA, _LOW_LOAD_GPA),
        # Linked at 0 so that each label is its IP relative to CS = 0xf000 (base 0xf0000).
        GuestSpec("tiny_bios", "reset-vector", _BIOS_LOW_GPA, _RESET_ADDRESS, 0, (_BIOS_HIGH_GPA,)),
    )
}


def lookup(name: str) -> GuestSpec:
    """The spec of guest ``name``; UnknownGuestError names the guests that exist."""
    try:
        return GUESTS[name]
    except KeyError:
        known = ", ".join(sorted(GUESTS))
        raise UnknownGuestError(f"no guest image named {name!r} (known: {known})") from None
