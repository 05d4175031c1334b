"""Scenarios: one record each, built-in or a project's own, and the one lookup by name.

A scenario is a VMM command together with how it is traced and judged: what its trace records
of KVM_RUN, how the VMM ends when it ran to its end (its exit status, within its timeout), the
QEMU reference it is held against and the allowances for it, the lint rules it turns off (each
with a reason), and, for a scenario whose deviations from that reference are its point, why.

The built-in scenarios (`SCENARIOS`) are programs of the VMM core (vmm/machine.py runs each by
its name); a project's scenarios come from its configuration (gate/project.py) and carry their
`ProjectCommand`. Everything downstream (tracing, the verdict, the pytest plugin) reads only this
record, whichever kind it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

from conformance.model.errors import UnknownScenarioError
from conformance.model.events import KvmRunMode

_Named = TypeVar("_Named")

DEFAULT_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class ProjectCommand:
    """A project's own VMM command line, as its configuration gives it."""

    argv: tuple[str, ...]  # as configured: a path in argv[0] is relative to `root`
    root: Path  # the project's root (the configuration file's directory): the command runs here
    stdin: bytes = b""  # its whole standard input


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    kvm_run: KvmRunMode = "full"
    # The QEMU reference its trace must fit inside: a shipped one by name ("tiny-bios"), or a
    # file of the project (an absolute Path). None: held against no reference.
    reference: str | Path | None = None
    allowances: Path | None = None  # None: the allowances file beside the reference, if any
    deviates_on_purpose: str | None = None  # why its deviations from that reference are wanted
    exit_status: int = 0  # how the VMM exits when the scenario ran to its end
    timeout: float = DEFAULT_TIMEOUT_SECONDS  # seconds before the run is stopped and failed
    command: ProjectCommand | None = None  # None: the VMM core's program of this name
    # Lint rules off for this scenario, rule id -> the reason (on top of the project's own).
    lint_disabled: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    defined_at: str | None = None  # "pyproject.toml:12" for a project's scenario


SCENARIOS: Mapping[str, Scenario] = MappingProxyType(
    {
        scenario.name: scenario
        for scenario in (
            Scenario(
                "memory-setup",
                "GET_API_VERSION, CREATE_VM, 256 KiB anonymous RAM in slot 0 at gpa 0; no vCPU",
                reference="memory-1g",
                deviates_on_purpose="the seed article's program maps 256 KiB directly where QEMU "
                "reserves and maps 1 GiB: this scenario exists to show those deviations",
            ),
            Scenario(
                "qemu-memory-layout",
                "1 GiB RAM MAP_FIXED inside a PROT_NONE reservation 2 MiB larger, as QEMU maps it",
                reference="memory-1g",
            ),
            Scenario(
                "hello",
                "real-mode guest prints over the 16550 and to the text screen (MMIO), then HLT",
            ),
            Scenario(
                "hello-long",
                "the hello guest from 64-bit long mode on VMM-built page tables and GDT",
            ),
            Scenario(
                "tiny-bios",
                "64 KiB firmware from the reset vector: serial output, then status 0x10 to 0xf4",
                reference="tiny-bios",
                exit_status=(0x10 << 1) | 1,  # as QEMU's isa-debug-exit reports value 0x10
            ),
            # exits-100k exists to time 100,000 exits; stopping at each under ptrace takes about
            # its own 10 s run limit, so its trace would end wherever the limit cut it. Its
            # KVM_RUNs run unstopped and unrecorded; every other call of it is traced.
            Scenario(
                "exits-100k",
                "100,000 port-IO exits to 0x80, then status 0 to the debug-exit port",
                kvm_run="off",
                exit_status=(0 << 1) | 1,
            ),
        )
    }
)


def scenario(name: str, table: Mapping[str, Scenario] = SCENARIOS) -> Scenario:
    return named(table, name, "scenario")


def select_scenarios(
    requested: Sequence[str], table: Mapping[str, Scenario] = SCENARIOS
) -> list[Scenario]:
    """The scenarios named, in the order `table` lists them; all when none is named."""
    for name in requested:
        scenario(name, table)
    return [found for found in table.values() if not requested or found.name in requested]


def named(table: Mapping[str, _Named], name: str, kind: str) -> _Named:
    """`table[name]`, or the one error for a name no table of scenarios knows."""
    found = table.get(name)
    if found is None:
        known = ", ".join(sorted(table)) or "none"
        raise UnknownScenarioError(f"no {kind} named {name!r} (known: {known})")
    return found
