"""The normalized trace document: what normalization builds, snapshots store and comparisons read.

A document is plain data: `source` (provenance, never compared but for `exit_status`, how the
traced program ended) and `threads`, each thread role mapped to its calls in order. A call is an
ordered mapping of YAML-ready values; `Hex` marks the ints that are shown in hex (addresses,
sizes, masks) without changing how they compare.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

SCHEMA = "kvm-conformance/2"
# Schema 1, still read: the same keys without the host profile, negotiation or host symbols
# (model/portable.py makes a schema 1 document what schema 2 would have written).
SCHEMA_1 = "kvm-conformance/1"
# The tracer's raw stream (`trace --format yaml`): tids, fd numbers, host addresses, flag bits.
# Its own name, so that no reader takes it for a normalized document.
RAW_SCHEMA = "kvm-conformance-raw/1"

# `source:` key of the guest memory each VM ran (tracer/guest_memory.py): {VM: {pages, sha256}}
GUEST_MEMORY = "guest_memory"

Value: TypeAlias = "int | str | list[Value] | dict[str, Value]"
Entry: TypeAlias = dict[str, Value]


class Hex(int):
    """An int written as 0x... in snapshots; equal to the plain int of the same value."""

    __slots__ = ()

    def __repr__(self) -> str:
        return hex(self)


@dataclass(frozen=True, slots=True)
class TraceCall:
    """One call of a thread: its normalized entry and, when loaded from a file, its line there."""

    entry: Entry
    line: int | None = None  # 1-based line in the snapshot file it was loaded from

    @property
    def name(self) -> str:
        """What a reader calls this call: the ioctl request for ioctls, else the syscall name."""
        if self.entry.get("call") == "ioctl" and "req" in self.entry:
            return str(self.entry["req"])
        return str(self.entry.get("call", "?"))

    @property
    def repeat(self) -> int:
        """How many identical consecutive calls this entry stands for (run-length encoding)."""
        count = self.entry.get("repeat", 1)
        return count if isinstance(count, int) else 1


@dataclass(slots=True)
class Located:
    """One call with where it is: its thread role and its index in that thread's list.

    Not frozen: rules walk every call of a trace many times, and a frozen dataclass is made
    several times slower (a 100 MB trace makes ~10 million of these)."""

    thread: str
    index: int
    call: TraceCall

    @property
    def entry(self) -> Entry:
        return self.call.entry


@dataclass(slots=True)
class TraceDocument:
    """A trace. One loaded from a file is read-only: calls written the same way share one
    entry (a long trace repeats its calls; sharing keeps a 100 MB trace in memory a few
    hundred MB smaller), so changing a loaded entry in place changes every call like it; build
    a new entry instead."""

    source: Entry
    threads: dict[str, list[TraceCall]]
    path: Path | None = None  # the file it was loaded from, for messages

    def sorted_roles(self) -> list[str]:
        return sorted(self.threads, key=thread_role_order)

    def calls(self, thread: str | None = None) -> Iterator[Located]:
        """Every call, thread by thread in role order (`main`, vcpus by number, others), each
        thread's calls in the order made; or one thread's. Order across threads is not
        recorded (docs/trace-format.md), so this order means nothing between two threads."""
        roles = self.sorted_roles() if thread is None else [thread]
        for role in roles:
            for index, call in enumerate(self.threads.get(role, ())):
                yield Located(role, index, call)

    def call_count(self) -> int:
        """Calls made, a run-length-encoded KVM_RUN counted once per call it stands for."""
        return sum(located.call.repeat for located in self.calls())


_VCPU_ROLE = re.compile(r"^(?P<prefix>.*?)vcpu(?P<index>\d+)(?P<rest>.*)$")


def thread_role_order(role: str) -> tuple[str, int, int, str]:
    """Sort key for thread roles: per process, `main` first, then vcpus by number, then others.

    Plain string order would put vcpu10 before vcpu2 and `main` after the vcpus.
    """
    process, _, thread = role.rpartition("/")
    if thread == "main":
        return (process, 0, 0, role)
    vcpu = _VCPU_ROLE.match(thread)
    if vcpu is not None and not vcpu.group("prefix"):
        return (process, 1, int(vcpu.group("index")), role)
    return (process, 2, 0, role)


def ordered_threads(threads: Iterable[tuple[str, list[TraceCall]]]) -> dict[str, list[TraceCall]]:
    return dict(sorted(threads, key=lambda item: thread_role_order(item[0])))
