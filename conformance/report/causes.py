"""Differences that have one cause, grouped: the same field across the entries of one table,
the same difference in N calls. Regression differences and conformance deviations alike.

    thread main, call #15 KVM_SET_CPUID2: in.entries[*].eax differs in 12 entries: ...
    thread vcpu0, 79 calls KVM_RUN (#3, #5, … #240): exit.coalesced_mmio: QEMU [...], ...

A reader sees one line per cause instead of a screen per CPUID register; `--full` lists every
member of a group.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

from conformance.compare.regression import ABSENT, Compared
from conformance.report.values import value_text

_INDEXED = re.compile(r"\[([^\]]*)\]")
_LISTED = 3  # members of a group named one by one before "… N more"
_VALUE = 60  # characters of a value in a one-line description


@dataclass(frozen=True, slots=True)
class Fact:
    """One difference, as reports group it: where it is, which field, both sides' values.

    `left` is the expected (or the reference's) value, `right` the actual (the subject's);
    `tag` is whatever else two facts must share to have one cause (a kind, an allowance)."""

    thread: str
    call: str
    index: int | None  # the call's position in the thread that is shown
    path: str  # "" for a whole call
    left: Compared
    right: Compared
    tag: Hashable = None
    note: str = ""  # said of the whole call instead of values ("extra call (...)")
    other_index: int | None = None  # the call's position on the other side, never grouped on
    counterpart: str = ""  # where the other side's call is, when that says more: "QEMU main #40"


@dataclass(slots=True)
class Cause:
    facts: list[Fact] = field(default_factory=list)

    @property
    def first(self) -> Fact:
        return self.facts[0]

    @property
    def indices(self) -> list[int]:
        return sorted({fact.index for fact in self.facts if fact.index is not None})

    @property
    def pattern(self) -> str:
        return pattern(self.first.path)

    @property
    def keys(self) -> list[str]:
        """The table keys or list positions the group spans, within one call: ["0x1/0x0", ...]."""
        seen: dict[str, None] = {}
        for fact in self.facts:
            if fact.index == self.first.index:
                seen.setdefault(", ".join(_INDEXED.findall(fact.path)), None)
        return [key for key in seen if key]


def pattern(path: str) -> str:
    """`in.entries[0x1/0x0].eax` -> `in.entries[*].eax`: what one field of every entry shares."""
    return _INDEXED.sub("[*]", path)


def group(facts: Iterable[Fact]) -> list[Cause]:
    """Facts in causes, in the order their first member came."""
    within: dict[Hashable, Cause] = {}
    for fact in facts:
        key = (fact.thread, fact.index, fact.call, pattern(fact.path), fact.tag, fact.note)
        within.setdefault(key, Cause()).facts.append(fact)
    across: dict[Hashable, Cause] = {}
    for cause in within.values():
        signature = tuple(
            (fact.path, value_text(fact.left), value_text(fact.right)) for fact in cause.facts
        )
        first = cause.first
        shared = (first.thread, first.call, first.tag, _plain_note(first.note), signature)
        across.setdefault(shared, Cause()).facts.extend(cause.facts)
    return list(across.values())


def _plain_note(note: str) -> str:
    """A note without the call numbers in it, so that N identical extra calls share one."""
    return re.sub(r"#\d+", "#", note)


def where(cause: Cause) -> str:
    """`thread main, call #24 KVM_SET_REGS` or `thread vcpu0, 79 calls KVM_RUN (#3, #5, … #240)`."""
    first = cause.first
    thread = thread_label(first.thread)
    indices = cause.indices
    if not indices:
        return f"{thread}: {first.call}" if thread else first.call
    if len(indices) == 1:
        return f"{thread}, call #{indices[0]} {first.call}"
    return f"{thread}, {len(indices)} calls {first.call} ({numbers(indices)})"


def what(cause: Cause, left: str, right: str) -> str:
    """The field and values: `in.rflags: expected 0x202, got 0x2`; for a group, the pattern,
    how many entries, and the values when they are the same in all."""
    first = cause.first
    if first.note:
        return first.note
    members = [fact for fact in cause.facts if fact.index == first.index]
    if all(_one_sided(fact) for fact in members):
        return _presence(cause, members, left, right)
    values = f"{left} {_value(first.left)}, {right} {_value(first.right)}"
    if len(members) == 1:
        text = f"{first.path}: {values}" if first.path else values
        return f"{text} ({first.counterpart})" if first.counterpart else text
    keys = cause.keys
    if len({(value_text(f.left), value_text(f.right)) for f in members}) == 1:
        return f"{cause.pattern} in {len(members)} entries ({listed(keys)}): {values}"
    shown = [
        f"[{key}] {_value(fact.left, 20)} -> {_value(fact.right, 20)}"
        for key, fact in zip(keys[:_LISTED], members, strict=False)
    ]
    more = f", … {len(members) - _LISTED} more" if len(members) > _LISTED else ""
    return f"{cause.pattern} differs in {len(members)} entries ({left} -> {right}): " + (
        ", ".join(shown) + more
    )


def _one_sided(fact: Fact) -> bool:
    """A table entry (or struct) only one side has."""
    return bool(fact.path) and (fact.left is ABSENT) != (fact.right is ABSENT)


def _presence(cause: Cause, members: list[Fact], left: str, right: str) -> str:
    """Entries only one side has: `in.entries[*]: 3 only in QEMU ([0xb/0x1], …)`."""
    if len(members) == 1:
        fact = members[0]
        side, value = (left, fact.left) if fact.right is ABSENT else (right, fact.right)
        return f"{fact.path}: only in {side}: {_value(value)}"
    keys = dict(zip(cause.keys, members, strict=False))
    only_left = [key for key, fact in keys.items() if fact.right is ABSENT]
    only_right = [key for key, fact in keys.items() if fact.left is ABSENT]
    parts = [
        f"{len(chosen)} only in {side} ({listed(chosen)})"
        for side, chosen in ((left, only_left), (right, only_right))
        if chosen
    ]
    return f"{cause.pattern}: {', '.join(parts)}"


def describe(cause: Cause, left: str, right: str) -> str:
    return f"{where(cause)}: {what(cause, left, right)}"


def thread_label(role: str) -> str:
    """How a report names a thread role: `thread main`, `thread vcpu0`; a role that already
    says it is a thread (`thread:vm`) as it is; "" for none."""
    if not role or role.startswith("thread:"):
        return role
    return f"thread {role}"


def numbers(indices: Sequence[int]) -> str:
    """#3, #5, … #240: the first few call numbers and the last."""
    if len(indices) <= _LISTED + 1:
        return ", ".join(f"#{index}" for index in indices)
    return ", ".join(f"#{index}" for index in indices[:_LISTED]) + f", … #{indices[-1]}"


def listed(keys: Sequence[str]) -> str:
    """[0x1/0x0], [0x7/0x0], … 9 more"""
    shown = ", ".join(f"[{key}]" for key in keys[:_LISTED])
    return shown + (f", … {len(keys) - _LISTED} more" if len(keys) > _LISTED else "")


def _value(value: Compared, limit: int = _VALUE) -> str:
    return value_text(value, limit)
