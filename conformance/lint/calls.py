"""Reading normalized calls the way the rules need them: fields, outcomes, fd roles, mappings.

Cross-thread order is not recorded in a trace document (docs/trace-format.md), so a rule judges
an order only between calls of one thread; facts that do not depend on order (what the VMM ever
asked KVM_CHECK_EXTENSION, how long a mapping is) are gathered over the whole process.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from conformance.model.document import Entry, TraceCall, TraceDocument, Value

PAGE_SIZE = 4096
# Errors that mean "ask again", not "refused": a signal (or immediate_exit) and a busy kernel.
RETRY_ERRNOS = frozenset({"EINTR", "EAGAIN"})

_ADDRESS = re.compile(r"^(?P<mapping>.+)\+0x(?P<offset>[0-9a-f]+)$")


@dataclass(frozen=True, slots=True)
class Located:
    """One call with where it is: its thread role and index there."""

    thread: str
    index: int
    call: TraceCall

    @property
    def entry(self) -> Entry:
        return self.call.entry


def process_of(role: str) -> str:
    """`proc0.1/` for `proc0.1/vcpu0`; "" in a single-process trace."""
    process, slash, _ = role.rpartition("/")
    return process + slash


def calls_in_order(document: TraceDocument) -> Iterator[tuple[str, list[Located]]]:
    for role in document.sorted_roles():
        yield (
            role,
            [Located(role, index, call) for index, call in enumerate(document.threads[role])],
        )


def request(entry: Entry) -> str:
    value = entry.get("req")
    return value if entry.get("call") == "ioctl" and isinstance(value, str) else ""


def section(entry: Entry, key: str) -> Mapping[str, Value]:
    """`in`, `out` or `exit` as a mapping ({} when absent)."""
    value = entry.get(key)
    return value if isinstance(value, dict) else {}


def integer(value: Value | None) -> int | None:
    return value if isinstance(value, int) else None


def entries(fields: Mapping[str, Value], key: str = "entries") -> list[Mapping[str, Value]]:
    value = fields.get(key)
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, dict)]


def failed(entry: Entry) -> bool:
    return "errno" in entry


def refused(entry: Entry) -> bool:
    """Failed with an error that is an answer, not a request to retry."""
    errno = entry.get("errno")
    return errno is not None and errno not in RETRY_ERRNOS


def answer(entry: Entry) -> int:
    """The ioctl's non-negative return value: normalization records a non-zero one as out.ret."""
    return integer(section(entry, "out").get("ret")) or 0


def fd(entry: Entry) -> str:
    value = entry.get("fd")
    return value if isinstance(value, str) else ""


def is_vcpu_fd(role: str) -> bool:
    return role.startswith("vcpu")


def address(value: Value | None) -> tuple[str, int] | None:
    """`ram0+0x1000` -> ("ram0", 0x1000); None for `unmapped`, a bare number or anything else."""
    if not isinstance(value, str):
        return None
    match = _ADDRESS.match(value)
    if match is None:
        return None
    return match.group("mapping"), int(match.group("offset"), 16)


def capability_answers(document: TraceDocument) -> dict[str, dict[str, int]]:
    """Per process, every capability the VMM asked about and the largest answer it got.

    A capability KVM does not have is answered 0, which normalization leaves out (no out.ret).
    """
    answers: dict[str, dict[str, int]] = {}
    for role, calls in document.threads.items():
        process = answers.setdefault(process_of(role), {})
        for call in calls:
            entry = call.entry
            if request(entry) != "KVM_CHECK_EXTENSION" or failed(entry):
                continue
            capability = entry.get("arg")
            if isinstance(capability, str):
                process[capability] = max(process.get(capability, 0), answer(entry))
    return answers


def mapping_lengths(document: TraceDocument) -> dict[str, dict[str, int]]:
    """Per process, each named mapping's length: from its mmap, or its last mremap."""
    lengths: dict[str, dict[str, int]] = {}
    for role, calls in document.threads.items():
        process = lengths.setdefault(process_of(role), {})
        for call in calls:
            entry = call.entry
            kind = entry.get("call")
            if kind == "mmap" and isinstance(entry.get("ret"), str):
                size = integer(entry.get("len"))
                if size is not None:
                    process[str(entry["ret"])] = size
            elif kind == "mremap":
                moved = address(entry.get("addr"))
                size = integer(entry.get("new_len"))
                if moved is not None and size is not None:
                    process[moved[0]] = moved[1] + size
    return lengths
