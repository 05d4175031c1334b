"""The built-in scenarios: one record each, and the one lookup by name.

A scenario is a program of the VMM core (vmm/machine.py runs it by this name) together with how
it is traced and judged: what its trace records of KVM_RUN, the QEMU reference it is held
against (a scenario of qemu/scenarios.py), and, for a scenario whose deviations from that
reference are its point, why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TypeVar

from conformance.model.errors import UnknownScenarioError
from conformance.model.events import KvmRunMode

_Named = TypeVar("_Named")


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    kvm_run: KvmRunMode = "full"
    reference: str | None = None  # the QEMU scenario whose recorded trace it must fit inside
    deviates_on_purpose: str | None = None  # why its deviations from that reference are wanted


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
            ),
            # exits-100k exists to time 100,000 exits; stopping at each under ptrace takes about
            # its own 10 s run limit, so its trace would end wherever the limit cut it. Its
            # KVM_RUNs run unstopped and unrecorded; every other call of it is traced.
            Scenario(
                "exits-100k",
                "100,000 port-IO exits to 0x80, then status 0 to the debug-exit port",
                kvm_run="off",
            ),
        )
    }
)


def scenario(name: str) -> Scenario:
    return named(SCENARIOS, name, "scenario")


def select_scenarios(requested: Sequence[str]) -> list[Scenario]:
    """The scenarios named, in the order SCENARIOS lists them; all when none is named."""
    for name in requested:
        scenario(name)
    return [found for found in SCENARIOS.values() if not requested or found.name in requested]


def named(table: Mapping[str, _Named], name: str, kind: str) -> _Named:
    """`table[name]`, or the one error for a name no table of scenarios knows."""
    found = table.get(name)
    if found is None:
        raise UnknownScenarioError(f"no {kind} named {name!r} (known: {', '.join(sorted(table))})")
    return found
