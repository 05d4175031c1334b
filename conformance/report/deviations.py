"""A conformance result for the terminal: verdict, each deviation's cause, how to allow one.

    tiny-bios against traces/qemu/tiny-bios.yaml: FAIL, 1 deviation not allowed (201 allowed)
    FAIL  thread main, call #24 KVM_SET_REGS: in.rdx: QEMU 0x60fb1, subject 0xa10f11 (QEMU main #40)
    ok    101 deviations of KVM_SET_CPUID2 (#15: in.entries[*], in.nent): qemu64 exposes ...
    ok    4 extra calls munmap (#101, #102, … #104): QEMU leaves guest memory mapped ...
    to allow: add {kind: field, call: KVM_SET_REGS, field: in.rdx, reason: ...} under `allow:`
      in traces/qemu/tiny-bios.allowances.yaml

Failing deviations with one cause are one line (report/causes.py); allowed ones are one line
per allowance and call. The memory layout in words comes when a memory call fails, or with
`full`, which also lists every deviation on its own line and cuts no line.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from conformance.compare.allowances import Allowance, DeviationKind, allowances_beside
from conformance.compare.conformance import ConformanceResult, Deviation, RowStatus
from conformance.compare.regression import ABSENT
from conformance.report import causes
from conformance.report.calls import call_summary
from conformance.report.causes import Fact
from conformance.report.values import ROW_MARKS, cut, shown

LINE_WIDTH = 200
_MEMORY_CALLS = frozenset(
    {"mmap", "munmap", "mremap", "KVM_SET_USER_MEMORY_REGION", "KVM_SET_USER_MEMORY_REGION2"}
)
_SKIPPED_SHOWN = 2  # reference-only calls shown around a run of skipped ones
_SIDE_WIDTH = 70


def render_conformance(result: ConformanceResult, name: str, *, full: bool = False) -> str:
    failures = result.failures
    allowed = len(result.deviations) - len(failures)
    where = shown(str(result.reference.path or "the reference"))
    count = len(failures)
    verdict = "ok" if result.ok else f"FAIL, {count} deviation{'s' * (count != 1)} not allowed"
    lines = [f"{shown(name)} against {where}: {verdict} ({allowed} allowed)"]
    if result.layout and (full or any(d.call in _MEMORY_CALLS for d in failures)):
        lines.append("memory layout:")
        lines.extend(f"  {shown(sentence)}" for sentence in result.layout)
    lines.extend(exit_lines(result))
    reference = reference_name(result)
    labels = (reference, "subject")
    for cause in causes.group(_fact(d, reference) for d in failures):
        lines.append(f"FAIL  {causes.describe(cause, *labels)}")
        if full and len(cause.facts) > 1:
            lines.extend(f"        {_single(fact, labels)}" for fact in cause.facts)
    if full:
        lines.extend(
            f"ok    {describe_deviation(d, reference)}" for d in result.deviations if d.allowed
        )
    else:
        lines.extend(f"ok    {line}" for line in _allowed_lines(result))
    if failures:
        lines.extend(_how_to_allow(result, failures[0]))
    return "\n".join(line if full else cut(line, LINE_WIDTH) for line in lines) + "\n"


def exit_lines(result: ConformanceResult) -> list[str]:
    """Whether KVM_RUN exits were compared, and why: when they were not (another guest, or one
    not recorded), each side's exits in one line instead of a deviation per exit."""
    exits = result.exits
    reference = reference_name(result)
    if exits is None or not exits.reason:
        return []
    if exits.compared:
        return [f"KVM_RUN exits compared: {exits.reason}"]
    return [
        f"KVM_RUN exits not compared: {exits.reason.replace('the reference', reference)}",
        f"  subject: {exits.subject}",
        f"  {reference}: {exits.reference}",
    ]


def reference_name(result: ConformanceResult) -> str:
    """How reports call the reference: QEMU for QEMU's traces."""
    return "QEMU" if result.reference.source.get("tool") == "qemu" else "the reference"


def describe_deviation(deviation: Deviation, reference: str = "QEMU") -> str:
    """One line: where, which call, which field, both values, and the allowance's reason."""
    text = _single(_fact(deviation, reference), (reference, "subject"))
    if deviation.allowed_by is not None:
        text += f"; allowed: {shown(deviation.allowed_by.reason)}"
    return text


def deviation_facts(result: ConformanceResult) -> list[Fact]:
    """Each deviation as a fact for grouping, failing and allowed alike (HTML groups them)."""
    reference = reference_name(result)
    return [_fact(deviation, reference) for deviation in result.deviations]


def _single(fact: Fact, labels: tuple[str, str]) -> str:
    return causes.describe(causes.Cause([fact]), *labels)


def _fact(deviation: Deviation, reference: str) -> Fact:
    tag = (deviation.kind, deviation.allowed_by)
    if deviation.kind is DeviationKind.MISSING:
        note = f"never made; required: {shown(deviation.note)}"
        return Fact("", deviation.call, None, "", ABSENT, ABSENT, tag, note)
    if deviation.kind is DeviationKind.EXTRA:
        note = f"extra call ({shown(deviation.note.replace('the reference', reference))})"
        return Fact(
            deviation.thread,
            deviation.call,
            deviation.subject_index,
            "",
            deviation.reference_value,
            deviation.subject_value,
            tag,
            note,
        )
    return Fact(
        deviation.thread,
        deviation.call,
        deviation.subject_index,
        deviation.path,
        deviation.reference_value,
        deviation.subject_value,
        tag,
        other_index=deviation.reference_index,
        counterpart=f"{reference} {deviation.reference_thread} #{deviation.reference_index}",
    )


def _allowed_lines(result: ConformanceResult) -> Iterator[str]:
    """One line per allowance and call: how many deviations, where, which fields, and why."""
    groups: dict[tuple[Allowance, DeviationKind, str], list[Deviation]] = {}
    for deviation in result.deviations:
        if deviation.allowed_by is not None:
            key = (deviation.allowed_by, deviation.kind, deviation.call)
            groups.setdefault(key, []).append(deviation)
    for (allowance, kind, call), members in groups.items():
        indices = sorted({d.subject_index for d in members if d.subject_index is not None})
        numbers = causes.numbers(indices)
        reason = shown(allowance.reason)
        if kind is DeviationKind.EXTRA:
            noun = "extra call" if len(members) == 1 else "extra calls"
            yield f"{len(members)} {noun} {call} ({numbers}): allowed: {reason}"
            continue
        fields = sorted({causes.pattern(d.path) for d in members})
        listed = ", ".join(fields[:3]) + (f", … {len(fields) - 3} more" if len(fields) > 3 else "")
        noun = "deviation" if len(members) == 1 else "deviations"
        yield f"{len(members)} {noun} of {call} ({numbers}: {listed}): allowed: {reason}"


def _how_to_allow(result: ConformanceResult, failure: Deviation) -> list[str]:
    """The last lines: where an allowance for this kind of deviation goes, ready to fill in."""
    if failure.kind is DeviationKind.MISSING:
        return [f"to pass: make {failure.call}, or drop its `require:` rule"]
    path = result.allowances.path or (
        allowances_beside(result.reference.path) if result.reference.path else None
    )
    rule = f"kind: {failure.kind.value}, call: {failure.call}"
    if failure.kind is DeviationKind.FIELD:
        rule += f", field: {causes.pattern(failure.path).split('[')[0]}"
    where = shown(str(path)) if isinstance(path, Path) else "the allowances file (--allowances)"
    return [
        f"to accept: add {{{rule}, reason: ...}} under `allow:`",
        f"  in {where} (every allowance says why)",
    ]


def side_by_side(result: ConformanceResult, thread: str, width: int = _SIDE_WIDTH) -> list[str]:
    """The aligned sequences of one subject thread: subject left, QEMU right, a call a line."""
    subject_calls = result.subject.threads[thread]
    lines = []
    skipped: list[str] = []

    def flush() -> None:
        if len(skipped) > 2 * _SKIPPED_SHOWN + 1:
            hidden = len(skipped) - 2 * _SKIPPED_SHOWN
            skipped[_SKIPPED_SHOWN:-_SKIPPED_SHOWN] = [
                f"{'':{width}} |   … {hidden} more QEMU calls the subject does not make"
            ]
        lines.extend(skipped)
        skipped.clear()

    for row in result.rows[thread]:
        left = right = ""
        if row.subject_index is not None:
            entry = subject_calls[row.subject_index].entry
            left = f"#{row.subject_index} {call_summary(entry, width - 5)}"
        if row.reference_thread is not None and row.reference_index is not None:
            reference = result.reference.threads[row.reference_thread][row.reference_index]
            right = f"#{row.reference_index} {call_summary(reference.entry, width)}"
            if row.reference_thread != thread:
                right = f"[{row.reference_thread}] {right}"
        line = f"{left:{width}} {ROW_MARKS[row.status]} {right}".rstrip()
        if row.status is RowStatus.SKIPPED:
            skipped.append(line)
            continue
        flush()
        lines.append(line)
    flush()
    return lines
