"""Conformance: does a subject VMM's trace fit inside QEMU's reference, as rules allow?

Per subject thread, its calls are aligned as an ordered subsequence of the reference thread of
the same role (`subsequence.align`); calls left over are looked for, in order, in the
reference's other threads, because which thread does what differs between VMMs (QEMU creates
each vCPU on its own thread, a small VMM often on its main one) and order across threads is
not recorded. Paired calls are compared field by field on what the VMM chose (`in:`, `arg`,
`exit`, results), never on kernel answers (`out:`); CPUID entries and MSR lists as keyed sets.

Deviations: a subject call QEMU does not make (`extra`), a paired call whose field differs
(`field`), and a call a rule requires that the subject never makes (`missing`). Reference calls
the subject skips are not deviations: QEMU does much more than a small VMM needs to. A rule
allows an extra or field deviation with its reason; the check passes when every deviation is
allowed.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from conformance.compare.alignment import align, conformance_identity
from conformance.compare.allowances import Allowance, Allowances, DeviationKind
from conformance.compare.memory_layout import layout_differences
from conformance.compare.regression import ABSENT, Compared, CompareOptions, field_differences
from conformance.model.document import TraceCall, TraceDocument, thread_role_order

# `undecoded` says what an strace import could not see; `repeat` is how often the guest made an
# exit, which QEMU's timer kicks and our VMM's answers to polling loops legitimately change.
_NEVER_COMPARED = ("undecoded", "repeat")


@dataclass(frozen=True, slots=True)
class Deviation:
    kind: DeviationKind
    thread: str  # the subject's thread ("" for a missing required call)
    call: str
    subject_index: int | None
    reference_thread: str | None = None
    reference_index: int | None = None
    path: str = ""
    reference_value: Compared = ABSENT
    subject_value: Compared = ABSENT
    note: str = ""  # what the check found out beyond the kind (order, a requirement's reason)
    allowed_by: Allowance | None = None

    @property
    def allowed(self) -> bool:
        return self.allowed_by is not None


class RowStatus(enum.Enum):
    """How one line of the side-by-side view pairs a subject call with the reference."""

    SAME = "same"  # paired on the reference thread of the same role, every field equal
    DIFFERS = "differs"  # paired, a field differs
    EXTRA = "extra"  # the subject's call, unpaired
    SKIPPED = "skipped"  # the reference's call, which the subject does not make
    ELSEWHERE = "elsewhere"  # paired, equal, on another reference thread


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the side-by-side view of a subject thread against the reference."""

    status: RowStatus
    subject_index: int | None
    reference_thread: str | None
    reference_index: int | None


@dataclass(slots=True)
class ConformanceResult:
    subject: TraceDocument
    reference: TraceDocument
    allowances: Allowances
    deviations: list[Deviation] = field(default_factory=list)
    rows: dict[str, list[Row]] = field(default_factory=dict)  # by subject thread
    layout: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[Deviation]:
        return [deviation for deviation in self.deviations if not deviation.allowed]

    @property
    def ok(self) -> bool:
        return not self.failures


def compare_with_reference(
    subject: TraceDocument, reference: TraceDocument, allowances: Allowances | None = None
) -> ConformanceResult:
    chosen = allowances or Allowances()
    result = ConformanceResult(
        subject=subject,
        reference=reference,
        allowances=chosen,
        layout=layout_differences(subject, reference),
    )
    options = CompareOptions(ignore=_NEVER_COMPARED)
    judge = _Judge(chosen)
    for role in sorted(subject.threads, key=thread_role_order):
        rows, deviations = _thread(role, subject, reference, options)
        result.rows[role] = rows
        result.deviations.extend(judge(deviation) for deviation in deviations)
    made = {located.call.name for located in subject.calls()}
    for requirement in chosen.require:
        if requirement.call not in made:
            result.deviations.append(
                Deviation(
                    kind=DeviationKind.MISSING,
                    thread="",
                    call=requirement.call,
                    subject_index=None,
                    note=requirement.reason,
                )
            )
    return result


class _Judge:
    """Allowances matched once per distinct (kind, thread, call, field): a long trace's
    deviations are mostly the same few."""

    def __init__(self, allowances: Allowances) -> None:
        self.allowances = allowances
        self.seen: dict[tuple[DeviationKind, str, str, str], Allowance | None] = {}

    def __call__(self, deviation: Deviation) -> Deviation:
        key = (deviation.kind, deviation.thread, deviation.call, deviation.path)
        if key not in self.seen:
            self.seen[key] = self.allowances.allowing(*key)
        allowance = self.seen[key]
        if allowance is None:
            return deviation
        return dataclasses.replace(deviation, allowed_by=allowance)


def _thread(
    role: str, subject: TraceDocument, reference: TraceDocument, options: CompareOptions
) -> tuple[list[Row], list[Deviation]]:
    calls = subject.threads[role]
    strace_subject = subject.source.get("tool") == "strace"

    def disagreement(mine: TraceCall, theirs: TraceCall) -> int:
        return len(call_differences(mine, theirs, options, strace_subject))

    primary_role = role if role in reference.threads else None
    primary = reference.threads.get(role, [])
    queries = [i for i, call in enumerate(calls) if _is_system_query(call)]
    ordered = [i for i, call in enumerate(calls) if not _is_system_query(call)]
    alignment = align([calls[i] for i in ordered], primary, disagreement)
    paired: dict[int, tuple[str, int]] = {ordered[s]: (role, r) for s, r in alignment.pairs}
    for index in queries:
        found = _anywhere(calls[index], reference, disagreement)
        if found is not None:
            paired[index] = found
    leftover = [ordered[s] for s in alignment.unpaired]
    for other_role in _other_threads(reference, primary_role, [calls[i] for i in leftover]):
        if not leftover:
            break
        others = reference.threads[other_role]
        secondary = align([calls[i] for i in leftover], others, disagreement)
        for s, r in secondary.pairs:
            paired[leftover[s]] = (other_role, r)
        leftover = [leftover[s] for s in secondary.unpaired]

    deviations: list[Deviation] = []
    first_made: dict[tuple[str, ...], int] = {}  # identity -> its first index in `primary`
    for position, theirs in enumerate(primary):
        first_made.setdefault(conformance_identity(theirs), position)
    for index, call in enumerate(calls):
        where = paired.get(index)
        if where is None:
            deviations.append(_extra(role, index, call, first_made, primary_role))
            continue
        other_role, other_index = where
        theirs = reference.threads[other_role][other_index]
        for path, reference_value, subject_value in call_differences(
            call, theirs, options, strace_subject
        ):
            deviations.append(
                Deviation(
                    kind=DeviationKind.FIELD,
                    thread=role,
                    call=call.name,
                    subject_index=index,
                    reference_thread=other_role,
                    reference_index=other_index,
                    path=path,
                    reference_value=reference_value,
                    subject_value=subject_value,
                )
            )
    return _rows(calls, primary, primary_role, paired, deviations), deviations


def _is_system_query(call: TraceCall) -> bool:
    """An ioctl on /dev/kvm's fd that creates nothing (not KVM_CREATE_VM) asks about the host
    and changes no VM: where a VMM asks it does not matter to KVM, so it is matched wherever
    the reference asks it."""
    entry = call.entry
    return entry.get("call") == "ioctl" and entry.get("fd") == "kvm" and "ret" not in entry


def _anywhere(
    call: TraceCall,
    reference: TraceDocument,
    disagreement: Callable[[TraceCall, TraceCall], int],
) -> tuple[str, int] | None:
    """The reference call, on any thread, of the same identity that agrees best."""
    identity = conformance_identity(call)
    candidates = [
        (
            disagreement(call, theirs.call),
            thread_role_order(theirs.thread),
            theirs.index,
            theirs.thread,
        )
        for theirs in reference.calls()
        if conformance_identity(theirs.call) == identity
    ]
    if not candidates:
        return None
    _, _, index, role = min(candidates)
    return role, index


def _extra(
    role: str,
    index: int,
    call: TraceCall,
    first_made: dict[tuple[str, ...], int],
    primary_role: str | None,
) -> Deviation:
    note = "the reference never makes this call"
    first = first_made.get(conformance_identity(call))
    if first is not None:
        note = (
            f"out of order: the reference makes {call.name} on thread {primary_role} "
            f"(#{first}), but not at this point"
        )
    return Deviation(
        kind=DeviationKind.EXTRA,
        thread=role,
        call=call.name,
        subject_index=index,
        reference_thread=primary_role,
        note=note,
    )


def _other_threads(
    reference: TraceDocument, primary: str | None, leftover: list[TraceCall]
) -> list[str]:
    """The reference's other threads, those sharing most calls with what is left first."""
    wanted = {conformance_identity(call) for call in leftover}

    def overlap(role: str) -> int:
        return sum(conformance_identity(call) in wanted for call in reference.threads[role])

    others = [role for role in reference.threads if role != primary]
    return sorted(others, key=lambda role: (-overlap(role), thread_role_order(role)))


def call_differences(
    subject: TraceCall, reference: TraceCall, options: CompareOptions, strace_subject: bool
) -> list[tuple[str, Compared, Compared]]:
    """(path, reference value, subject value) for each compared field that differs; CPUID
    entries and MSR lists as keyed sets (compare.field_differences does that)."""
    ignore = options.ignore
    if "undecoded" in subject.entry:  # strace printed a pointer: inputs unknown, not empty
        ignore = (*ignore, "in", "out")
    plain = CompareOptions(compare_outputs=options.compare_outputs, ignore=ignore)
    found = list(field_differences(reference, subject, plain))
    if strace_subject:  # strace leaves padding and reserved fields out: absent is unknown
        found = [item for item in found if item[2] is not ABSENT]
    return found


def _rows(
    calls: list[TraceCall],
    primary: list[TraceCall],
    primary_role: str | None,
    paired: dict[int, tuple[str, int]],
    deviations: list[Deviation],
) -> list[Row]:
    differing = {d.subject_index for d in deviations if d.kind is DeviationKind.FIELD}
    rows: list[Row] = []
    next_reference = 0
    for index in range(len(calls)):
        where = paired.get(index)
        if where is not None and where[0] == primary_role:
            rows.extend(_skipped(primary_role, next_reference, where[1]))
            next_reference = where[1] + 1
        if where is None:
            rows.append(Row(RowStatus.EXTRA, index, None, None))
            continue
        if index in differing:
            status = RowStatus.DIFFERS
        else:
            status = RowStatus.SAME if where[0] == primary_role else RowStatus.ELSEWHERE
        rows.append(Row(status, index, where[0], where[1]))
    rows.extend(_skipped(primary_role, next_reference, len(primary)))
    return rows


def _skipped(role: str | None, start: int, stop: int) -> Iterator[Row]:
    for index in range(start, stop):
        yield Row(RowStatus.SKIPPED, None, role, index)
