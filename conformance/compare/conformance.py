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
allowed. An extra call's note says what the whole reference does instead: the same call on
another thread, on another fd, or nothing like it.

Fields that are not a VMM's decision (abi/not_decisions.py) are left out of every pair
(`ConformanceResult.left_out` keeps the differences that left out). KVM_RUN exits are the
guest's behaviour, not the VMM's: they are compared only when both sides ran the same guest
(compare/guest_images.py); otherwise each side's exits are summarized in `exits`.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from conformance.compare.alignment import align, conformance_identity
from conformance.compare.allowances import Allowance, Allowances, DeviationKind
from conformance.compare.decisions import LeftOut, decide
from conformance.compare.guest_images import ExitComparison, compare_exits
from conformance.compare.host_differences import HostContext
from conformance.compare.memory_layout import layout_differences
from conformance.compare.regression import ABSENT, Compared, CompareOptions, field_differences
from conformance.model.calls import fd as fd_of
from conformance.model.document import TraceCall, TraceDocument, thread_role_order

# `undecoded` says what an strace import could not see; `repeat` is how often the guest made an
# exit, which QEMU's timer kicks and our VMM's answers to polling loops legitimately change.
_NEVER_COMPARED = ("undecoded", "repeat")
_FDS_SHOWN = 3  # the reference's other fds an extra call's note names


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
    fd: str = ""  # the subject call's fd role
    arg: str = ""  # its integer argument where it names what is asked (a capability)

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
    # Differences in paired calls left out because the field is not a VMM decision.
    left_out: list[LeftOut] = field(default_factory=list)
    exits: ExitComparison | None = None  # whether KVM_RUN exits were compared, and why
    hosts: HostContext | None = None  # the two traces' hosts (what they explain is not compared)

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
    exits = compare_exits(subject, reference)
    result = ConformanceResult(
        subject=subject,
        reference=reference,
        allowances=chosen,
        layout=layout_differences(subject, reference),
        exits=exits,
    )
    result.hosts = HostContext.between(reference, subject)
    options = CompareOptions(ignore=_NEVER_COMPARED, hosts=result.hosts)
    for role in sorted(subject.threads, key=thread_role_order):
        thread = _Thread(role, subject, reference, options, compare_runs=exits.compared)
        result.rows[role] = thread.rows
        result.deviations.extend(_judged(deviation, chosen) for deviation in thread.deviations)
        result.left_out.extend(thread.left_out)
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


def _judged(deviation: Deviation, allowances: Allowances) -> Deviation:
    allowance = allowances.allowing(deviation)
    if allowance is None:
        return deviation
    return dataclasses.replace(deviation, allowed_by=allowance)


class _Thread:
    """One subject thread against the reference: its pairing, deviations, rows."""

    def __init__(
        self,
        role: str,
        subject: TraceDocument,
        reference: TraceDocument,
        options: CompareOptions,
        *,
        compare_runs: bool,
    ) -> None:
        self.role = role
        self.reference = reference
        self.options = options
        self.strace_subject = subject.source.get("tool") == "strace"
        self.deviations: list[Deviation] = []
        self.left_out: list[LeftOut] = []
        calls = subject.threads[role]
        # Without the same guest, a KVM_RUN says what the guest did: summarized, not paired.
        compared = [i for i, call in enumerate(calls) if compare_runs or call.name != "KVM_RUN"]
        self.primary_role = role if role in reference.threads else None
        primary = reference.threads.get(role, [])
        paired = self._pair(calls, compared, primary)
        for index in compared:
            self._judge(index, calls[index], paired.get(index), primary)
        self.rows = self._rows(compared, primary, paired)

    def disagreement(self, mine: TraceCall, theirs: TraceCall) -> int:
        """How badly two calls of one identity pair: differing fields, and fields that are a
        decision in one only (a registration against a slot's deletion)."""
        differences, _, one_sided = _compared(mine, theirs, self.options, self.strace_subject)
        return len(differences) + one_sided

    def _pair(
        self, calls: list[TraceCall], compared: list[int], primary: list[TraceCall]
    ) -> dict[int, tuple[str, int]]:
        queries = [i for i in compared if _is_system_query(calls[i])]
        ordered = [i for i in compared if not _is_system_query(calls[i])]
        alignment = align([calls[i] for i in ordered], primary, self.disagreement)
        paired = {ordered[s]: (self.role, r) for s, r in alignment.pairs}
        for index in queries:
            found = _anywhere(calls[index], self.reference, self.disagreement)
            if found is not None:
                paired[index] = found
        leftover = [ordered[s] for s in alignment.unpaired]
        others = _other_threads(self.reference, self.primary_role, [calls[i] for i in leftover])
        for other_role in others:
            if not leftover:
                break
            secondary = align(
                [calls[i] for i in leftover], self.reference.threads[other_role], self.disagreement
            )
            for s, r in secondary.pairs:
                paired[leftover[s]] = (other_role, r)
            leftover = [leftover[s] for s in secondary.unpaired]
        return paired

    def _judge(
        self, index: int, call: TraceCall, where: tuple[str, int] | None, primary: list[TraceCall]
    ) -> None:
        made = Deviation(
            kind=DeviationKind.EXTRA,
            thread=self.role,
            call=call.name,
            subject_index=index,
            fd=fd_of(call.entry),
            arg=_argument(call),
        )
        if where is None:
            note = _extra_note(call, self.reference, self.primary_role, primary)
            self.deviations.append(
                dataclasses.replace(made, reference_thread=self.primary_role, note=note)
            )
            return
        other_role, other_index = where
        theirs = self.reference.threads[other_role][other_index]
        differences, left_out = call_differences(call, theirs, self.options, self.strace_subject)
        self.left_out.extend(left_out)
        for path, reference_value, subject_value in differences:
            self.deviations.append(
                dataclasses.replace(
                    made,
                    kind=DeviationKind.FIELD,
                    reference_thread=other_role,
                    reference_index=other_index,
                    path=path,
                    reference_value=reference_value,
                    subject_value=subject_value,
                )
            )

    def _rows(
        self, compared: list[int], primary: list[TraceCall], paired: dict[int, tuple[str, int]]
    ) -> list[Row]:
        """The side-by-side view: each compared subject call, and the reference's calls of the
        thread of the same role that it skipped, in order."""
        differing = {d.subject_index for d in self.deviations if d.kind is DeviationKind.FIELD}
        rows: list[Row] = []
        next_reference = 0
        for index in compared:
            where = paired.get(index)
            if where is not None and where[0] == self.primary_role:
                rows.extend(_skipped(self.primary_role, next_reference, where[1]))
                next_reference = where[1] + 1
            if where is None:
                rows.append(Row(RowStatus.EXTRA, index, None, None))
                continue
            if index in differing:
                status = RowStatus.DIFFERS
            else:
                status = RowStatus.SAME if where[0] == self.primary_role else RowStatus.ELSEWHERE
            rows.append(Row(status, index, where[0], where[1]))
        rows.extend(_skipped(self.primary_role, next_reference, len(primary)))
        return rows


def _argument(call: TraceCall) -> str:
    """The argument that is part of a call's identity (KVM_CHECK_EXTENSION's capability)."""
    identity = conformance_identity(call)
    return identity[3] if len(identity) > 3 else ""


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


def _extra_note(
    call: TraceCall, reference: TraceDocument, primary_role: str | None, primary: list[TraceCall]
) -> str:
    """What the whole reference does instead of this call: the same call elsewhere in its
    thread, on another thread, on another fd, or nothing of the kind."""
    identity = conformance_identity(call)
    what = _what(call)
    here = [i for i, theirs in enumerate(primary) if conformance_identity(theirs) == identity]
    if here:
        return (
            f"out of order: the reference makes {what} on thread {primary_role} (#{here[0]}), "
            "but not at this point"
        )
    elsewhere = [
        located for located in reference.calls() if conformance_identity(located.call) == identity
    ]
    if elsewhere:
        first = elsewhere[0]
        return (
            f"out of order: the reference makes {what} on thread {first.thread} "
            f"(#{first.index}), but not at this point"
        )
    on_fds = sorted(
        {
            fd_of(located.entry)
            for located in reference.calls()
            if located.call.name == call.name and _argument(located.call) == _argument(call)
        }
        - {fd_of(call.entry)}
    )
    if on_fds:
        shown = ", ".join(on_fds[:_FDS_SHOWN]) + (
            f" and {len(on_fds) - _FDS_SHOWN} more" if len(on_fds) > _FDS_SHOWN else ""
        )
        return f"the reference makes {what} on {shown}, never on {fd_of(call.entry)}"
    return f"the reference never makes {what}"


def _what(call: TraceCall) -> str:
    argument = _argument(call)
    return f"{call.name}({argument})" if argument else call.name


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
) -> tuple[list[tuple[str, Compared, Compared]], list[LeftOut]]:
    """(path, reference value, subject value) for each compared field that differs, and the
    differences left out as not VMM decisions. CPUID entries and MSR lists are compared as
    keyed sets (regression.field_differences does that)."""
    differences, left_out, _ = _compared(subject, reference, options, strace_subject)
    return differences, left_out


def _compared(
    subject: TraceCall, reference: TraceCall, options: CompareOptions, strace_subject: bool
) -> tuple[list[tuple[str, Compared, Compared]], list[LeftOut], int]:
    ignore = options.ignore
    if "undecoded" in subject.entry:  # strace printed a pointer: inputs unknown, not empty
        ignore = (*ignore, "in", "out")
    plain = dataclasses.replace(options, ignore=ignore)
    left_out: list[LeftOut] = []
    found = list(field_differences(reference, subject, plain, left_out))
    if strace_subject:  # strace leaves padding and reserved fields out: absent is unknown
        found = [item for item in found if item[2] is not ABSENT]
    return found, left_out, decide(reference, subject).one_sided


def _skipped(role: str | None, start: int, stop: int) -> Iterator[Row]:
    for index in range(start, stop):
        yield Row(RowStatus.SKIPPED, None, role, index)
