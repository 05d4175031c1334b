"""Guest images the VMM core runs, as committed raw bytes with their assembly source beside them.

``guest(name)`` returns the committed image and how to load and enter it; ``build_variant``
assembles a variant with different build-time constants (e.g. ``exits_100k`` with
``ITERATIONS=1_000_000``), which needs GNU binutils.  Each ``.S`` file documents exactly what
the VMM must set up and which exits the guest makes.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from conformance.vmm.guests._catalog import (
    GUESTS,
    GuestBuildError,
    GuestSpec,
    Mode,
    UnknownGuestError,
    lookup,
)

__all__ = [
    "GUEST_NAMES",
    "GuestBuildError",
    "GuestImage",
    "Mode",
    "UnknownGuestError",
    "build_variant",
    "guest",
]

GUEST_NAMES: tuple[str, ...] = tuple(GUESTS)


@dataclass(frozen=True)
class GuestImage:
    """A guest's bytes and where they go.

    ``load_gpa`` is where ``image`` is placed; ``alias_gpas`` are further guest-physical
    addresses that must show the same bytes (the BIOS ROM's high alias).  ``entry`` is the
    guest-physical address of the first instruction: CS base + IP in ``real`` mode, RIP on an
    identity map in ``long`` mode, 0xfffffff0 for ``reset-vector`` (KVM's vCPU reset state).
    """

    name: str
    image: bytes
    load_gpa: int
    mode: Mode
    entry: int
    alias_gpas: tuple[int, ...] = ()


def guest(name: str) -> GuestImage:
    """The committed image of guest ``name``; UnknownGuestError if there is none."""
    spec = lookup(name)
    image = resources.files(__name__).joinpath(f"{spec.name}.bin").read_bytes()
    return _image(spec, image)


def build_variant(name: str, **defsyms: int) -> GuestImage:
    """Assemble guest ``name`` with build-time constants overridden (needs binutils)."""
    # Imported on use: importing the package must not import ``build``, or running
    # ``python -m conformance.vmm.guests.build`` would find it already loaded.
    from conformance.vmm.guests.build import build  # noqa: PLC0415

    return _image(lookup(name), build(name, **defsyms))


def _image(spec: GuestSpec, image: bytes) -> GuestImage:
    return GuestImage(spec.name, image, spec.load_gpa, spec.mode, spec.entry, spec.alias_gpas)
