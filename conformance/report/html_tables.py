"""The parts of the HTML report that show calls: differences and deviations grouped by cause
(a group is a <details> to expand), and each thread's two sequences side by side with the
differing fields marked. Every element a filter acts on carries `data-thread`, `data-call` and
`data-failing`; report/html.py's script reads them."""

from __future__ import annotations

import html
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from conformance.compare.allowances import Allowance, DeviationKind
from conformance.compare.conformance import ConformanceResult, RowStatus
from conformance.compare.regression import Comparison, DifferenceKind, aligned_calls
from conformance.model.document import TraceCall
from conformance.report import causes
from conformance.report.calls import call_summary
from conformance.report.causes import Cause, Fact
from conformance.report.deviations import deviation_facts, reference_name
from conformance.report.diff import comparison_facts
from conformance.report.values import ROW_MARKS, shown, value_text

_OPEN_UP_TO = 8  # a failing group of at most this many members starts expanded
_EQUAL_SHOWN = 2  # equal calls shown at each end of a folded run
_VALUE = 120  # characters of a value in a marked field


def e(text: str) -> str:
    """Input-derived text, made printable (model.printable) and escaped for HTML."""
    return html.escape(shown(text), quote=True)


@dataclass(frozen=True, slots=True)
class FailingItem:
    """A failing difference, deviation or finding, as the page's summary links to it."""

    anchor: str
    text: str
    thread: str
    call: str

    def attributes(self) -> str:
        return attributes(self.thread, self.call, failing=True)


@dataclass(slots=True)
class Anchors:
    """Ids for the items of one scenario's section, and its failing ones for the summary."""

    prefix: str
    failing: list[FailingItem] = field(default_factory=list)
    _count: int = 0

    def new(self) -> str:
        self._count += 1
        return f"{self.prefix}-{self._count}"


def attributes(thread: str, call: str, *, failing: bool) -> str:
    """What the page's filters read: the thread, the call, whether it fails."""
    return f'data-thread="{e(thread)}" data-call="{e(call)}" data-failing="{int(failing)}"'


def cause_items(
    grouped: Sequence[Cause],
    labels: tuple[str, str],
    anchors: Anchors,
    failing: bool,
) -> Iterator[str]:
    """One <li> per cause; a cause of several members is a <details> listing them."""
    for cause in grouped:
        first = cause.first
        anchor = anchors.new()
        text = causes.describe(cause, *labels)
        reason = _allowance(first)
        if failing:
            anchors.failing.append(FailingItem(anchor, text, first.thread, first.call))
        css = "failing" if failing else "allowed"
        marked = attributes(first.thread, first.call, failing=failing)
        head = f'<li id="{anchor}" class="cause {css}" {marked}>'
        suffix = f' <span class="reason">allowed: {e(reason)}</span>' if reason else ""
        if len(cause.facts) == 1:
            yield f"{head}{e(text)}{suffix}</li>"
            continue
        opened = " open" if failing and len(cause.facts) <= _OPEN_UP_TO else ""
        members = "".join(
            f"<li>{e(causes.describe(Cause([fact]), *labels))}</li>" for fact in cause.facts
        )
        yield (
            f"{head}<details{opened}><summary>{e(text)} ({len(cause.facts)}){suffix}</summary>"
            f'<ul class="members">{members}</ul></details></li>'
        )


def _allowance(fact: Fact) -> str:
    tag = fact.tag
    if isinstance(tag, tuple) and len(tag) == 2 and isinstance(tag[1], Allowance):
        return tag[1].reason
    return ""


def conformance_causes(result: ConformanceResult, anchors: Anchors, *, judged: bool) -> list[str]:
    """Deviations not allowed (failing, unless the judgment did not fail: a scenario that
    deviates on purpose), then the allowed ones."""
    facts = deviation_facts(result)
    labels = (reference_name(result), "subject")
    failing = [fact for fact in facts if not _allowance(fact)]
    allowed = [fact for fact in facts if _allowance(fact)]
    items = list(cause_items(causes.group(failing), labels, anchors, failing=judged))
    items += cause_items(causes.group(allowed), labels, anchors, failing=False)
    return items


def regression_causes(comparison: Comparison, anchors: Anchors) -> list[str]:
    grouped = causes.group(comparison_facts(comparison))
    return list(cause_items(grouped, ("expected", "got"), anchors, failing=True))


# -- side by side ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Marked:
    path: str
    value: str
    failing: bool


def _cell(index: int | None, calls: Sequence[TraceCall], marks: Sequence[_Marked]) -> str:
    if index is None:
        return ""
    text = f"#{index} {call_summary(calls[index].entry)}"
    fields = "".join(
        f'<div class="field"><mark class="{"fail" if mark.failing else "allowed"}">'
        f"{e(mark.path)}: {e(mark.value)}</mark></div>"
        for mark in marks
    )
    return e(text) + fields


def _row(status: str, mark: str, left: str, right: str, attributes: str) -> str:
    return (
        f'<tr class="{status}" {attributes}><td>{left}</td>'
        f'<td class="mark">{e(mark)}</td><td>{right}</td></tr>'
    )


def _folded(rows: list[str], what: str) -> list[str]:
    """A run of rows nobody needs to read, folded into a <details> but for its ends."""
    if len(rows) <= 2 * _EQUAL_SHOWN + 1:
        return rows
    inner = rows[_EQUAL_SHOWN:-_EQUAL_SHOWN]
    fold = (
        f'<tr class="fold"><td colspan="3"><details><summary>{len(inner)} {e(what)}</summary>'
        f'<table class="calls">{"".join(inner)}</table></details></td></tr>'
    )
    return [*rows[:_EQUAL_SHOWN], fold, *rows[-_EQUAL_SHOWN:]]


def conformance_table(result: ConformanceResult, thread: str, *, judged: bool) -> str:
    """The subject thread beside the reference calls it was aligned with; `judged`: whether
    deviations not allowed fail (they do not for a scenario that deviates on purpose)."""
    reference = reference_name(result)
    subject_calls = result.subject.threads[thread]
    marks: dict[int, tuple[list[_Marked], list[_Marked]]] = {}
    failing_calls: set[int] = set()
    for deviation in result.deviations:
        if deviation.thread != thread or deviation.subject_index is None:
            continue
        if not deviation.allowed and judged:
            failing_calls.add(deviation.subject_index)
        if deviation.kind is DeviationKind.FIELD:
            left, right = marks.setdefault(deviation.subject_index, ([], []))
            left.append(
                _Marked(
                    deviation.path,
                    value_text(deviation.subject_value, _VALUE),
                    not deviation.allowed,
                )
            )
            right.append(
                _Marked(
                    deviation.path,
                    value_text(deviation.reference_value, _VALUE),
                    not deviation.allowed,
                )
            )
    out: list[str] = []
    skipped: list[str] = []
    for row in result.rows[thread]:
        theirs: Sequence[TraceCall] = []
        if row.reference_thread is not None:
            theirs = result.reference.threads[row.reference_thread]
        none: tuple[list[_Marked], list[_Marked]] = ([], [])
        left_marks, right_marks = (
            marks.get(row.subject_index, none) if row.subject_index is not None else none
        )
        left_cell = _cell(row.subject_index, subject_calls, left_marks)
        right_cell = _cell(row.reference_index, theirs, right_marks)
        if row.reference_thread not in (None, thread) and right_cell:
            right_cell = f"[{e(row.reference_thread or '')}] {right_cell}"
        entry = (
            subject_calls[row.subject_index]
            if row.subject_index is not None
            else theirs[row.reference_index or 0]
        )
        failing = row.subject_index in failing_calls
        line = _row(
            row.status.value,
            ROW_MARKS[row.status],
            left_cell,
            right_cell,
            attributes(thread, entry.name, failing=failing),
        )
        if row.status is RowStatus.SKIPPED:
            skipped.append(line)
            continue
        out.extend(_folded(skipped, f"{reference} calls the subject does not make"))
        skipped = []
        out.append(line)
    out.extend(_folded(skipped, f"{reference} calls the subject does not make"))
    return _table(thread, f"subject | {reference}", out)


def regression_table(comparison: Comparison, thread: str) -> str:
    """The expected thread beside the actual one, aligned as the comparison aligned them."""
    expected = comparison.expected.threads.get(thread, [])
    actual = comparison.actual.threads.get(thread, [])
    fields: dict[int, tuple[list[_Marked], list[_Marked]]] = {}
    for difference in comparison.differences:
        if difference.thread == thread and difference.kind is DifferenceKind.FIELD:
            left, right = fields.setdefault(difference.actual_index or 0, ([], []))
            left.append(_Marked(difference.path, value_text(difference.expected, _VALUE), True))
            right.append(_Marked(difference.path, value_text(difference.actual, _VALUE), True))
    out: list[str] = []
    same: list[str] = []
    for tag, e_start, e_end, a_start, a_end in aligned_calls(expected, actual, comparison.options):
        if tag == "equal":
            for offset in range(e_end - e_start):
                mine, theirs = e_start + offset, a_start + offset
                marked = fields.get(theirs)
                status = "differs" if marked else "same"
                line = _row(
                    status,
                    "≠" if marked else "=",
                    _cell(mine, expected, marked[0] if marked else []),
                    _cell(theirs, actual, marked[1] if marked else []),
                    attributes(thread, actual[theirs].name, failing=bool(marked)),
                )
                if marked:
                    out.extend(_folded(same, "equal calls"))
                    same = []
                    out.append(line)
                else:
                    same.append(line)
            continue
        out.extend(_folded(same, "equal calls"))
        same = []
        for index in range(e_start, e_end):
            out.append(
                _row(
                    "missing",
                    "-",
                    _cell(index, expected, []),
                    "",
                    attributes(thread, expected[index].name, failing=True),
                )
            )
        for index in range(a_start, a_end):
            out.append(
                _row(
                    "extra",
                    "+",
                    "",
                    _cell(index, actual, []),
                    attributes(thread, actual[index].name, failing=True),
                )
            )
    out.extend(_folded(same, "equal calls"))
    return _table(thread, "expected | got", out)


def _table(thread: str, sides: str, rows: list[str]) -> str:
    return (
        f'<div class="thread" data-thread="{e(thread)}"><h4>thread {e(thread)}: {e(sides)}</h4>'
        f'<table class="calls">{"".join(rows)}</table></div>'
    )
