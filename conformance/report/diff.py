"""A regression comparison as a terminal diff: one line per cause, then the calls around it.

    hello: 1 difference from expected/hello.yaml
    thread main, call #24 KVM_SET_REGS: in.rflags: expected 0x202, got 0x2
          #22  KVM_SET_SREGS(vcpu0)
          #23  KVM_GET_REGS(vcpu0)
        - #24  KVM_SET_REGS(vcpu0)  in.rflags: [-0x202-]
        + #24  KVM_SET_REGS(vcpu0)  in.rflags: {+0x2+}
          #25  KVM_RUN(vcpu0) -> KVM_EXIT_IO in 0x3fd
          #26  KVM_RUN(vcpu0) -> KVM_EXIT_IO out 0x3f8 [0x48]
    to accept: kvm-conformance check --update --scenario hello

Context calls are one short line each (report/calls.py), from the actual trace; `-` lines are the
expected side, `+` the actual, with the changed fields marked as `git diff --word-diff` marks
them (colour instead of marks on a terminal). A call found elsewhere in the sequence is a move
(`>`), differences with one cause are one line (report/causes.py), and no line is longer than
200 characters; `full` prints every difference and every call whole. Colour only on a
terminal, and never when NO_COLOR is set (https://no-color.org).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TextIO

from conformance.compare.regression import ABSENT, Comparison, Difference, DifferenceKind
from conformance.model.document import Entry, TraceCall
from conformance.model.flow_yaml import format_call
from conformance.report import causes
from conformance.report.calls import call_summary
from conformance.report.causes import Cause, Fact
from conformance.report.host import explained_lines
from conformance.report.values import cut, shown, value_text

CONTEXT_CALLS = 2
LINE_WIDTH = 200  # no line is longer, unless `full`
_SHOWN_CAUSES = 6  # causes shown with their context before "… N more"
_MARKED_FIELDS = 3  # changed fields shown on a -/+ line before "… N more"
_MARKED_VALUE = 60
_RED, _GREEN, _BOLD, _DIM, _RESET = "\033[31m", "\033[32m", "\033[1m", "\033[2m", "\033[0m"
_REVERSE = "\033[7m"
_MOVED = "moved"
_LABELS = ("expected", "got")


def use_color(stream: TextIO) -> bool:
    return stream.isatty() and not os.environ.get("NO_COLOR")


def write_comparison(comparison: Comparison, stream: TextIO, *, accept: str | None = None) -> None:
    stream.write(render_comparison(comparison, color=use_color(stream), accept=accept))


@dataclass(frozen=True, slots=True)
class _Move:
    """A call missing at one place and made, the same, at another: one move."""

    thread: str
    call: str
    expected_index: int
    actual_index: int


def render_comparison(
    comparison: Comparison, *, color: bool = False, full: bool = False, accept: str | None = None
) -> str:
    """The diff; `accept`: the command that accepts the change, said on the last line."""
    paint = _Painter(color)
    facts = comparison_facts(comparison)
    count = len(facts)
    where = comparison.expected.path
    against = f" from {shown(str(where))}" if where is not None else ""
    noun = "difference" if count == 1 else "differences"
    lines = [paint.bold(f"{shown(comparison.scenario)}: {count or 'no'} {noun}{against}")]
    grouped = causes.group(facts)
    hunks = list(_hunks(grouped))
    shown_hunks = hunks if full else hunks[:_SHOWN_CAUSES]
    for hunk in shown_hunks:
        for cause in hunk:
            lines.append(paint.bold(_fit(causes.describe(cause, *_LABELS), full)))
            if full and len(cause.facts) > 1:
                lines.extend(f"    {_fit(_describe_fact(fact), full)}" for fact in cause.facts)
        lines.extend(_context(comparison, hunk, paint, full))
    hidden = sum(len(cause.facts) for hunk in hunks[len(shown_hunks) :] for cause in hunk)
    if hidden:
        lines.append(f"… {hidden} more difference{'s' * (hidden != 1)} (--full shows them all)")
    lines.extend(explained_lines(comparison))
    if count and accept is not None:
        lines.append(f"to accept: {accept}")
    return "\n".join(lines) + "\n"


def comparison_facts(comparison: Comparison) -> list[Fact]:
    """Each difference once, as a fact; a call missing at one place and made at another is one
    fact (a move), not a missing and an extra call."""
    failures = comparison.failures  # what the hosts explain is said apart (report/host.py)
    moves = _moves(failures)
    paired = {id(d) for pair in moves.values() for d in pair}
    facts: list[Fact] = []
    for difference in failures:
        move = next((m for m, pair in moves.items() if pair[1] is difference), None)
        if move is not None:
            facts.append(_move_fact(comparison, move))
        elif id(difference) not in paired:
            facts.append(_fact(difference))
    return facts


def _describe_fact(fact: Fact) -> str:
    return causes.describe(causes.Cause([fact]), *_LABELS)


def _fact(difference: Difference) -> Fact:
    kind, thread, name = difference.kind, difference.thread, difference.call_name
    match kind:
        case DifferenceKind.EXIT_STATUS:  # of the whole run: no thread, no call
            return Fact("", "exit status", None, "", difference.expected, difference.actual, kind)
        case DifferenceKind.MISSING_THREAD:
            note = f"missing ({value_text(difference.expected)} calls expected)"
            return Fact(thread, "", None, "", ABSENT, ABSENT, kind, note)
        case DifferenceKind.EXTRA_THREAD:
            note = f"not expected ({value_text(difference.actual)} calls made)"
            return Fact(thread, "", None, "", ABSENT, ABSENT, kind, note)
        case DifferenceKind.MISSING_CALL:
            expected, index = difference.expected, difference.expected_index
            position = difference.actual_index
            return Fact(thread, name, index, "", expected, ABSENT, kind, "missing", position)
        case DifferenceKind.EXTRA_CALL:
            actual, index = difference.actual, difference.actual_index
            return Fact(thread, name, index, "", ABSENT, actual, kind, "not expected")
    return Fact(
        thread,
        name,
        difference.actual_index,
        difference.path,
        difference.expected,
        difference.actual,
        kind,
        other_index=difference.expected_index,
    )


def _moves(differences: list[Difference]) -> dict[_Move, tuple[Difference, Difference]]:
    """Missing and extra calls of one thread that are the same call (kernel answers aside)."""
    moves: dict[_Move, tuple[Difference, Difference]] = {}
    extras = [d for d in differences if d.kind is DifferenceKind.EXTRA_CALL]
    for missing in (d for d in differences if d.kind is DifferenceKind.MISSING_CALL):
        for extra in extras:
            if extra.thread == missing.thread and _same_call(missing.expected, extra.actual):
                extras.remove(extra)
                move = _Move(
                    missing.thread,
                    missing.call_name,
                    missing.expected_index or 0,
                    extra.actual_index or 0,
                )
                moves[move] = (missing, extra)
                break
    return moves


def _same_call(expected: object, actual: object) -> bool:
    if not (isinstance(expected, dict) and isinstance(actual, dict)):
        return False
    return {k: v for k, v in expected.items() if k != "out"} == {
        k: v for k, v in actual.items() if k != "out"
    }


def _move_fact(comparison: Comparison, move: _Move) -> Fact:
    expected = comparison.expected.threads.get(move.thread, [])
    before = expected[move.expected_index - 1].name if move.expected_index > 0 else None
    after = f", after {before}" if before else ", first"
    note = f"moved: expected as #{move.expected_index}{after}"
    return Fact(
        move.thread,
        move.call,
        move.actual_index,
        "",
        ABSENT,
        ABSENT,
        _MOVED,
        note,
        move.expected_index,
    )


def _position(fact: Fact) -> int | None:
    """Where the fact is in the actual thread (for a missing call: where it would have come)."""
    return fact.other_index if fact.tag is DifferenceKind.MISSING_CALL else fact.index


def _hunks(grouped: list[Cause]) -> Iterator[list[Cause]]:
    """Causes shown under one context: the fields of one call, or a run of calls."""
    hunk: list[Cause] = []
    for cause in grouped:
        if hunk and _same_hunk(hunk[-1].first, cause.first):
            hunk.append(cause)
            continue
        if hunk:
            yield hunk
        hunk = [cause]
    if hunk:
        yield hunk


def _same_hunk(previous: Fact, current: Fact) -> bool:
    """Next to each other in one thread: one context shows both."""
    before, now = _position(previous), _position(current)
    if previous.thread != current.thread or before is None or now is None:
        return False
    return 0 <= now - before <= 1


def _context(comparison: Comparison, hunk: list[Cause], paint: _Painter, full: bool) -> list[str]:
    """The calls of a hunk (-/+ for a changed call, - missing, + extra, > moved) between the
    actual calls before and after them."""
    first = hunk[0].first
    anchor = _position(first)
    if anchor is None:
        return []
    actual = comparison.actual.threads.get(first.thread, [])
    expected = comparison.expected.threads.get(first.thread, [])
    lines: list[str] = []
    after = anchor
    changed: dict[int, list[Fact]] = {}  # a changed call's position -> its changed fields
    for cause in hunk:
        for fact in cause.facts:
            if fact.path and fact.index is not None and anchor <= fact.index <= anchor + 1:
                changed.setdefault(fact.index, []).append(fact)
    for cause in hunk:
        fact = cause.first
        index = fact.index if fact.index is not None else 0
        if fact.path:
            fields = changed.pop(index, None)
            if fields is None:  # that call's -/+ lines are written
                continue
            lines.append(
                paint.red(_marked("-", fact.other_index, expected, fields, paint=paint, full=full))
            )
            lines.append(paint.green(_marked("+", index, actual, fields, paint=paint, full=full)))
        elif fact.tag is DifferenceKind.MISSING_CALL:
            lines.append(paint.red(_call_line("-", index, expected, full)))
            continue
        elif fact.tag is DifferenceKind.EXTRA_CALL:
            lines.append(paint.green(_call_line("+", index, actual, full)))
        else:
            lines.append(paint.bold(_call_line(">", index, actual, full)))
        after = max(after, index + 1)
    before = [_plain(i, actual, full) for i in range(max(0, anchor - CONTEXT_CALLS), anchor)]
    later = [_plain(i, actual, full) for i in range(after, min(len(actual), after + CONTEXT_CALLS))]
    return [*map(paint.dim, before), *lines, *map(paint.dim, later)]


def _plain(index: int, calls: list[TraceCall], full: bool) -> str:
    return f"      {_number(index)} {_call_text(calls[index].entry, full)}"


def _call_line(sign: str, index: int, calls: list[TraceCall], full: bool) -> str:
    entry = calls[index].entry if 0 <= index < len(calls) else {}
    return f"    {sign} {_number(index)} {_call_text(entry, full)}"


def _call_text(entry: Entry, full: bool) -> str:
    return shown(format_call(entry)) if full else call_summary(entry)


def _marked(
    sign: str,
    index: int | None,
    calls: list[TraceCall],
    fields: list[Fact],
    *,
    paint: _Painter,
    full: bool,
) -> str:
    """`- #24  KVM_SET_REGS(vcpu0)  in.rflags: [-0x202-]`: the call, and its changed fields
    (`-`: the expected side's values, `+`: the actual's)."""
    entry = calls[index].entry if index is not None and 0 <= index < len(calls) else {}
    chosen = fields if full else fields[:_MARKED_FIELDS]
    changes = []
    for fact in chosen:
        value = value_text(fact.left if sign == "-" else fact.right)
        value = value if full else cut(value, _MARKED_VALUE)
        changes.append(f"{fact.path}: {paint.mark(value, sign)}")
    if len(chosen) < len(fields):
        changes.append(f"… {len(fields) - len(chosen)} more")
    text = f"    {sign} {_number(index)} {_call_text(entry, full)}  {', '.join(changes)}"
    return text if full else paint.fit(text, LINE_WIDTH)


def _number(index: int | None) -> str:
    return f"#{index}".ljust(4) if index is not None else "    "


def _fit(text: str, full: bool) -> str:
    return text if full else cut(text, LINE_WIDTH)


class _Painter:
    def __init__(self, color: bool) -> None:
        self._color = color

    def _paint(self, code: str, text: str) -> str:
        return f"{code}{text}{_RESET}" if self._color else text

    def red(self, text: str) -> str:
        return self._paint(_RED, text)

    def green(self, text: str) -> str:
        return self._paint(_GREEN, text)

    def bold(self, text: str) -> str:
        return self._paint(_BOLD, text)

    def dim(self, text: str) -> str:
        return self._paint(_DIM, text)

    def mark(self, value: str, sign: str) -> str:
        """A changed value: `[-old-]` / `{+new+}` as git's word diff, reversed on a terminal
        (the line's own colour comes back after it)."""
        if self._color:
            line = _RED if sign == "-" else _GREEN
            return f"{_REVERSE}{value}{_RESET}{line}"
        return f"[-{value}-]" if sign == "-" else f"{{+{value}+}}"

    def fit(self, text: str, width: int) -> str:
        """Cut to `width` visible characters; colour codes do not count (they are only
        written on a terminal, where a cut code would spill over the next line)."""
        return text if self._color else cut(text, width)
