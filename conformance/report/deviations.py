"""A conformance result for the terminal: verdict, memory layout in words, each deviation named.

tiny-bios against traces/qemu/tiny-bios.yaml: FAIL, 1 deviation not allowed (3 allowed)
memory layout:
  slot 0: QEMU reserves 1075838976 bytes PROT_NONE and maps 1 GiB MAP_FIXED inside it; ...
FAIL  thread main, call #5 KVM_SET_USER_MEMORY_REGION: in.flags: QEMU [], subject [...]
ok    thread main, call #3 KVM_SET_TSS_ADDR: extra call, allowed: QEMU does it on ...
"""

from __future__ import annotations

from conformance.compare.allowances import DeviationKind
from conformance.compare.conformance import ConformanceResult, Deviation, RowStatus
from conformance.model.flow_yaml import format_call
from conformance.report.values import ROW_MARKS, value_text

_FOLDED_AFTER = 3  # allowed deviations of one call by one rule shown one by one up to this
_SKIPPED_SHOWN = 2  # reference-only calls shown around a run of skipped ones


def render_conformance(result: ConformanceResult, name: str) -> str:
    failures = len(result.failures)
    allowed = len(result.deviations) - failures
    where = result.reference.path or "the reference"
    verdict = (
        "ok" if result.ok else f"FAIL, {failures} deviation{'s' * (failures != 1)} not allowed"
    )
    lines = [f"{name} against {where}: {verdict} ({allowed} allowed)"]
    if result.layout:
        lines.append("memory layout:")
        lines.extend(f"  {sentence}" for sentence in result.layout)
    reference = reference_name(result)
    lines.extend(f"FAIL  {describe_deviation(d, reference)}" for d in result.failures)
    lines.extend(f"ok    {line}" for line in _allowed_lines(result))
    return "\n".join(lines) + "\n"


def _allowed_lines(result: ConformanceResult) -> list[str]:
    """Allowed deviations, those allowed by one rule for one call folded into one line when
    there are more than a few (CPUID tables, KVM_RUN exits)."""
    groups: dict[tuple[DeviationKind, str, str], list[Deviation]] = {}
    for deviation in result.deviations:
        if deviation.allowed_by is not None:
            key = (deviation.kind, deviation.call, deviation.allowed_by.reason)
            groups.setdefault(key, []).append(deviation)
    lines: list[str] = []
    for (kind, call, reason), members in groups.items():
        if len(members) <= _FOLDED_AFTER:
            lines.extend(describe_deviation(d, reference_name(result)) for d in members)
        else:
            paths = sorted(
                {deviation.path.split("[")[0] for deviation in members if deviation.path}
            )
            what = f" ({', '.join(paths)})" if paths else ""
            lines.append(
                f"{len(members)} {kind.value} deviations of {call}{what}; allowed: {reason}"
            )
    return lines


def reference_name(result: ConformanceResult) -> str:
    """How reports call the reference: QEMU for QEMU's traces."""
    return "QEMU" if result.reference.source.get("tool") == "qemu" else "the reference"


def describe_deviation(deviation: Deviation, reference: str = "QEMU") -> str:
    """One line: where, which call, which field, both values, and the rule or finding."""
    if deviation.kind is DeviationKind.MISSING:
        return f"{deviation.call}: never made; required: {deviation.note}"
    head = f"thread {deviation.thread}, call #{deviation.subject_index} {deviation.call}"
    if deviation.kind is DeviationKind.EXTRA:
        note = deviation.note.replace("the reference", reference)
        text = f"{head}: extra call ({note})"
    else:
        against = f"{deviation.reference_thread} #{deviation.reference_index}"
        text = (
            f"{head}: {deviation.path}: {reference} {value_text(deviation.reference_value)}, "
            f"subject {value_text(deviation.subject_value)} ({reference}'s call: thread {against})"
        )
    if deviation.allowed_by is not None:
        text += f"; allowed: {deviation.allowed_by.reason}"
    return text


def side_by_side(result: ConformanceResult, thread: str, width: int = 70) -> list[str]:
    """The aligned sequences of one subject thread: subject left, QEMU right."""
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
            left = _cut(format_call(subject_calls[row.subject_index].entry), width)
        if row.reference_thread is not None and row.reference_index is not None:
            reference = result.reference.threads[row.reference_thread][row.reference_index]
            right = format_call(reference.entry)
            if row.reference_thread != thread:
                right = f"[{row.reference_thread} #{row.reference_index}] {right}"
        line = f"{left:{width}} {ROW_MARKS[row.status]} {right}".rstrip()
        if row.status is RowStatus.SKIPPED:
            skipped.append(line)
            continue
        flush()
        lines.append(line)
    flush()
    return lines


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
