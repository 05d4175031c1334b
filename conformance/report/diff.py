"""A comparison as a terminal diff: one line per difference, then the calls around it.

    memory-setup: 1 difference (expected expected/memory-setup.yaml)
    thread main, call #5 KVM_SET_USER_MEMORY_REGION: in.guest_phys_addr: expected 0x0, got 0x1000
          #3  {call: ioctl, fd: kvm, req: KVM_CREATE_VM, arg: 0, ret: vm}
          #4  {call: mmap, len: 0x40000, prot: [PROT_READ, PROT_WRITE], ...}
        - #5  {call: ioctl, fd: vm, req: KVM_SET_USER_MEMORY_REGION, in: {... 0x0 ...}}
        + #5  {call: ioctl, fd: vm, req: KVM_SET_USER_MEMORY_REGION, in: {... 0x1000 ...}}

Context calls come from the actual trace; `-` lines are the expected side, `+` the actual.
Colour only on a terminal, and never when NO_COLOR is set (https://no-color.org).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TextIO

from conformance.compare.regression import Comparison, Difference, DifferenceKind
from conformance.model.document import TraceCall
from conformance.model.flow_yaml import format_call
from conformance.model.printable import printable_text
from conformance.report.values import value_text

CONTEXT_CALLS = 2
_CALL_KINDS = (DifferenceKind.MISSING_CALL, DifferenceKind.EXTRA_CALL)
_RED, _GREEN, _BOLD, _DIM, _RESET = "\033[31m", "\033[32m", "\033[1m", "\033[2m", "\033[0m"


def use_color(stream: TextIO) -> bool:
    return stream.isatty() and not os.environ.get("NO_COLOR")


def write_comparison(comparison: Comparison, stream: TextIO) -> None:
    stream.write(render_comparison(comparison, color=use_color(stream)))


def render_comparison(comparison: Comparison, *, color: bool = False) -> str:
    paint = _Painter(color)
    count = len(comparison.differences)
    where = comparison.expected.path
    against = f" (expected {where})" if where is not None else ""
    noun = "difference" if count == 1 else "differences"
    lines = [paint.bold(f"{comparison.scenario}: {count or 'no'} {noun}{against}")]
    for group in _groups(comparison.differences):
        lines.extend(paint.bold(describe(difference)) for difference in group)
        lines.extend(_context(comparison, group, paint))
    return "\n".join(lines) + "\n"


def describe(difference: Difference) -> str:
    """One line saying what differs, where."""
    thread = f"thread {difference.thread}"
    match difference.kind:
        case DifferenceKind.MISSING_THREAD:
            return f"{thread}: missing ({value_text(difference.expected)} calls expected)"
        case DifferenceKind.EXTRA_THREAD:
            return f"{thread}: not expected ({value_text(difference.actual)} calls made)"
        case DifferenceKind.MISSING_CALL:
            return f"{thread}, call #{difference.expected_index} {difference.call_name}: missing"
        case DifferenceKind.EXTRA_CALL:
            return f"{thread}, call #{difference.actual_index} {difference.call_name}: not expected"
    position = f"#{difference.actual_index}"
    if difference.expected_index != difference.actual_index:
        position += f" (expected #{difference.expected_index})"
    return (
        f"{thread}, call {position} {difference.call_name}: {difference.path}: "
        f"expected {value_text(difference.expected)}, got {value_text(difference.actual)}"
    )


def _groups(differences: list[Difference]) -> Iterator[list[Difference]]:
    """Differences shown under one context: a call's fields, or a run of missing/extra calls."""
    group: list[Difference] = []
    for difference in differences:
        if group and _same_group(group[-1], difference):
            group.append(difference)
            continue
        if group:
            yield group
        group = [difference]
    if group:
        yield group


def _same_group(previous: Difference, current: Difference) -> bool:
    if previous.thread != current.thread:
        return False
    if previous.kind is DifferenceKind.FIELD and current.kind is DifferenceKind.FIELD:
        return (previous.expected_index, previous.actual_index) == (
            current.expected_index,
            current.actual_index,
        )
    if previous.kind in _CALL_KINDS and current.kind in _CALL_KINDS:
        return (current.actual_index or 0) <= (previous.actual_index or 0) + 1
    return False


def _context(comparison: Comparison, group: list[Difference], paint: _Painter) -> list[str]:
    first = group[0]
    if first.kind not in (DifferenceKind.FIELD, *_CALL_KINDS):
        return []
    actual = comparison.actual.threads.get(first.thread, [])
    expected = comparison.expected.threads.get(first.thread, [])
    removed = [d for d in group if d.kind is not DifferenceKind.EXTRA_CALL]
    added = [d for d in group if d.kind is not DifferenceKind.MISSING_CALL]
    anchor = first.actual_index or 0
    after = max((d.actual_index or 0) for d in added) + 1 if added else anchor
    lines = [_plain(i, actual) for i in range(max(0, anchor - CONTEXT_CALLS), anchor)]
    lines += [
        paint.red(_marked("-", d.expected_index, expected))
        for d in _distinct(removed, expected=True)
    ]
    lines += [
        paint.green(_marked("+", d.actual_index, actual)) for d in _distinct(added, expected=False)
    ]
    lines += [_plain(i, actual) for i in range(after, min(len(actual), after + CONTEXT_CALLS))]
    return [paint.dim(line) if line.startswith("      ") else line for line in lines]


def _distinct(differences: list[Difference], *, expected: bool) -> list[Difference]:
    """One line per call, however many of its fields differ."""
    seen: set[int | None] = set()
    chosen = []
    for difference in differences:
        index = difference.expected_index if expected else difference.actual_index
        if index not in seen:
            seen.add(index)
            chosen.append(difference)
    return chosen


def _plain(index: int, calls: list[TraceCall]) -> str:
    return f"      {_number(index)} {format_call(calls[index].entry)}"


def _marked(sign: str, index: int | None, calls: list[TraceCall]) -> str:
    entry = calls[index].entry if index is not None and index < len(calls) else {}
    return f"    {sign} {_number(index)} {format_call(entry)}"


def _number(index: int | None) -> str:
    return f"#{index}".ljust(5)


class _Painter:
    def __init__(self, color: bool) -> None:
        self._color = color

    def _paint(self, code: str, text: str) -> str:
        # Every line goes through here: what it quotes from a trace is made printable before
        # colour codes of our own are put around it.
        shown = printable_text(text)
        return f"{code}{shown}{_RESET}" if self._color else shown

    def red(self, text: str) -> str:
        return self._paint(_RED, text)

    def green(self, text: str) -> str:
        return self._paint(_GREEN, text)

    def bold(self, text: str) -> str:
        return self._paint(_BOLD, text)

    def dim(self, text: str) -> str:
        return self._paint(_DIM, text)
