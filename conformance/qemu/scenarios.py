"""QEMU's side of the conformance check: the command lines references are recorded from.

Each scenario is a QEMU command line that runs to its end by itself: the `-S` ones stop before
the first instruction and are ended with `quit` on the monitor (fed on stdin), `tiny-bios` runs
the same 64 KiB image our VMM core runs and ends through isa-debug-exit, which makes QEMU exit
with (value << 1) | 1. Which of them a built-in scenario is held against is that scenario's
record's (model/scenarios.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType

from conformance.model.scenarios import named

QEMU_BINARY = "qemu-system-x86_64"
QEMU_APT_PACKAGE = "qemu-system-x86"
_GUEST_IMAGE = "{image}"  # stands for the tiny-bios image's path in an argument list
# Value the tiny-bios guest writes to the debug-exit port (tiny_bios.S), as QEMU reports it.
_TINY_BIOS_STATUS = (0x10 << 1) | 1


@dataclass(frozen=True)
class QemuScenario:
    name: str
    description: str
    arguments: tuple[str, ...]  # after the binary
    monitor_input: bytes  # written to QEMU's stdin
    expected_status: int

    def argv(self, qemu: str) -> list[str]:
        image = str(tiny_bios_image())
        return [
            qemu,
            *(image if argument == _GUEST_IMAGE else argument for argument in self.arguments),
        ]


def tiny_bios_image() -> Path:
    """The image our VMM core's tiny-bios scenario runs: the same bytes for both VMMs."""
    return Path(str(resources.files("conformance.vmm.guests").joinpath("tiny_bios.bin")))


QEMU_SCENARIOS: Mapping[str, QemuScenario] = MappingProxyType(
    {
        scenario.name: scenario
        for scenario in (
            QemuScenario(
                "setup",
                "QEMU's default machine stopped before the first instruction (-S), then quit",
                ("-accel", "kvm", "-nographic", "-nodefaults", "-S", "-monitor", "stdio"),
                b"quit\n",
                0,
            ),
            QemuScenario(
                "memory-1g",
                "the seed article's run: -m 1G, stopped before the first instruction, then quit",
                (
                    "-accel",
                    "kvm",
                    "-m",
                    "1G",
                    "-nographic",
                    "-nodefaults",
                    "-S",
                    "-monitor",
                    "stdio",
                ),
                b"quit\n",
                0,
            ),
            QemuScenario(
                "tiny-bios",
                "the tiny-bios image as -bios, serial on stdio, ended through isa-debug-exit",
                (
                    "-accel",
                    "kvm",
                    "-bios",
                    _GUEST_IMAGE,
                    "-device",
                    "isa-debug-exit,iobase=0xf4,iosize=0x04",
                    "-nographic",
                    "-nodefaults",
                    "-serial",
                    "stdio",
                ),
                b"",
                _TINY_BIOS_STATUS,
            ),
        )
    }
)


def qemu_scenario(name: str) -> QemuScenario:
    return named(QEMU_SCENARIOS, name, "QEMU scenario")
