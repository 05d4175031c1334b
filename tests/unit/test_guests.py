"""The guest images: registry, committed bytes against their sources, tiny_bios under QEMU."""

from __future__ import annotations

import shutil
import struct
import subprocess
from importlib import resources

import pytest

from conformance.model.errors import ConformanceError
from conformance.vmm.guests import (
    GUEST_NAMES,
    GuestBuildError,
    UnknownGuestError,
    build_variant,
    guest,
)
from conformance.vmm.guests.build import build

needs_binutils = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("as", "ld", "objcopy")),
    reason="needs GNU as, ld and objcopy",
)

TINY_BIOS_MESSAGE = b"tiny-bios: hello from the reset vector\n"
TINY_BIOS_EXIT_STATUS = (0x10 << 1) | 1
QEMU_TIMEOUT_S = 20


def _files_ending(suffix: str) -> set[str]:
    package = resources.files("conformance.vmm.guests")
    return {f.name.removesuffix(suffix) for f in package.iterdir() if f.name.endswith(suffix)}


def test_every_guest_has_its_source_and_committed_image_and_no_other() -> None:
    assert _files_ending(".bin") == _files_ending(".S") == set(GUEST_NAMES)


@needs_binutils
@pytest.mark.parametrize("name", GUEST_NAMES)
def test_committed_image_equals_a_fresh_build(name: str) -> None:
    assert guest(name).image == build(name)


@pytest.mark.parametrize(
    ("name", "mode", "load_gpa", "entry", "alias_gpas"),
    [
        ("hello", "real", 0x1000, 0x1000, ()),
        ("exits_100k", "real", 0x1000, 0x1000, ()),
        ("hello_long", "long", 0x1000, 0x1000, ()),
        ("tiny_bios", "reset-vector", 0xF0000, 0xFFFFFFF0, (0xFFFF0000,)),
    ],
)
def test_load_and_entry_conventions(
    name: str, mode: str, load_gpa: int, entry: int, alias_gpas: tuple[int, ...]
) -> None:
    image = guest(name)
    assert (image.mode, image.load_gpa, image.entry, image.alias_gpas) == (
        mode,
        load_gpa,
        entry,
        alias_gpas,
    )


def test_tiny_bios_far_jumps_from_the_reset_vector_into_the_image() -> None:
    image = guest("tiny_bios").image
    assert len(image) == 65536
    opcode, offset, segment = struct.unpack_from("<BHH", image, 0xFFF0)
    assert (opcode, segment) == (0xEA, 0xF000)  # jmp ptr16:16
    assert offset < 0xFFF0


def test_unknown_guest_is_a_conformance_error() -> None:
    with pytest.raises(UnknownGuestError, match="no-such-guest") as raised:
        guest("no-such-guest")
    assert isinstance(raised.value, ConformanceError)


def test_build_rejects_a_constant_the_source_does_not_declare() -> None:
    with pytest.raises(GuestBuildError, match="ITERATION"):
        build("exits_100k", ITERATION=10)


@needs_binutils
def test_exits_variant_carries_its_iteration_count() -> None:
    default = guest("exits_100k").image
    variant = build_variant("exits_100k", ITERATIONS=1_000_000)
    assert struct.pack("<I", 100_000) in default
    assert struct.pack("<I", 1_000_000) in variant.image
    assert (variant.mode, variant.load_gpa, variant.entry) == ("real", 0x1000, 0x1000)


@needs_binutils
def test_exits_variant_refuses_a_count_the_loop_cannot_do() -> None:
    with pytest.raises(GuestBuildError, match="ITERATIONS must be"):
        build("exits_100k", ITERATIONS=0)


@pytest.mark.needs_qemu
@pytest.mark.needs_kvm
def test_tiny_bios_runs_under_qemu() -> None:
    with resources.as_file(
        resources.files("conformance.vmm.guests").joinpath("tiny_bios.bin")
    ) as image:
        result = subprocess.run(
            [
                "qemu-system-x86_64",
                "-accel", "kvm",
                "-bios", str(image),
                "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
                "-nographic", "-nodefaults",
                "-serial", "stdio",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=QEMU_TIMEOUT_S,
            check=False,
        )  # fmt: skip
    assert result.stdout == TINY_BIOS_MESSAGE, result.stderr
    assert result.returncode == TINY_BIOS_EXIT_STATUS, result.stderr
