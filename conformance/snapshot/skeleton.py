"""Splitting a trace's text: the one-line calls the fast reader takes, and the rest for libyaml.

`split(text)` reads the lines under `threads:` that are a whole call on one line (`  - {...}`)
with `FlowReader`, and gives back the *skeleton*: the text with each run of such lines replaced
by one placeholder item (`  - __kvmc_run_17__`) followed by blank lines, so that every other
line keeps its number. libyaml composes the skeleton (the header, the role keys, block-style
calls, and any line the fast reader did not take); the loader puts each run's calls back where
its placeholder is. A placeholder found anywhere else, or not found, means the text was not
laid out as it looked (a placeholder line inside a block scalar, say): the loader then reads
the original text with libyaml alone.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from conformance.model.document import Entry
from conformance.snapshot.flow_lines import FlowReader

_FLOW_ITEM = re.compile(r"( *)- (\{.*\})")
PLACEHOLDER = re.compile(r"__kvmc_run_([0-9]+)__")


@dataclass(frozen=True, slots=True)
class FastCall:
    line: int  # 1-based
    entry: Entry
    # False when the same text came before: its entry is the one already checked (a check
    # that failed ends the load), so checking it again would find nothing new.
    first_of_its_text: bool


@dataclass(slots=True)
class Run:
    """Consecutive one-line calls of one thread, standing in the skeleton as one placeholder."""

    first_line: int  # 1-based: the placeholder's line
    indent: int  # the column of its `-`
    calls: list[FastCall] = field(default_factory=list)


@dataclass(slots=True)
class Split:
    skeleton: str
    runs: dict[int, Run]  # by first line


def split(text: str) -> Split:
    reader = FlowReader()
    skeleton: list[str] = []
    runs: dict[int, Run] = {}
    run: Run | None = None
    layout = _ThreadLayout()
    # A trace repeats its calls: a text read before is not read again, and the calls written
    # the same share one entry (a loaded document is read-only; see TraceDocument).
    remembered: dict[str, Entry] = {}
    for number, line in enumerate(_lines(text), start=1):
        item = _FLOW_ITEM.fullmatch(line) if layout.is_call_item(line) else None
        entry = None
        first = True
        if item is not None:
            body = item[2]
            known = remembered.get(body)
            if known is not None:
                entry, first = known, False
            else:
                entry = reader.flow_mapping(body)
                if entry is not None and len(remembered) < 1 << 16:
                    remembered[body] = entry
        if entry is None or item is None:
            skeleton.append(line)
            run = None
            continue
        indent = len(item[1])
        if run is None or run.indent != indent:
            run = Run(number, indent)
            runs[number] = run
            skeleton.append(f"{item[1]}- __kvmc_run_{number}__")
        else:
            skeleton.append("")
        run.calls.append(FastCall(number, entry, first))
    return Split("\n".join(skeleton), runs)


def _lines(text: str) -> Iterator[str]:
    """text.split("\n") one line at a time: a 100 MB trace's lines are not all held at once."""
    start = 0
    while (end := text.find("\n", start)) >= 0:
        yield text[start:end]
        start = end + 1
    yield text[start:]


class _ThreadLayout:
    """Follows indentation under `threads:`: which lines start an item of a thread's list (not
    an entry of a table inside a block-style call, which is indented further)."""

    def __init__(self) -> None:
        self.in_threads = False
        self.role_indent: int | None = None
        self.item_indent: int | None = None

    def is_call_item(self, line: str) -> bool:
        stripped = line.lstrip(" ")
        if not stripped:
            return False
        indent = len(line) - len(stripped)
        if indent == 0:  # a top-level key (or anything at column 0)
            self.in_threads = line == "threads:"
            self.role_indent = self.item_indent = None
            return False
        if not self.in_threads:
            return False
        if not stripped.startswith("- "):
            if self.role_indent is None:
                self.role_indent = indent
            if indent == self.role_indent:  # the next role's key: its items come next
                self.item_indent = None
            return False
        if self.item_indent is None:
            self.item_indent = indent
        return indent == self.item_indent
