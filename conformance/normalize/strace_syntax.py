"""The text of an `strace -f [-yy] [-X verbose] [-v]` log, parsed into calls and values.

One `StraceCall` per completed system call: `<unfinished ...>` / `<... NAME resumed>` halves are
joined per thread. Lines strace writes about processes rather than calls (`--- SIGUSR1 ... ---`,
`+++ exited with 0 +++`, `strace: Process N attached`) are recognized and skipped. Anything
else is malformed: StraceSyntaxError names the line, or, when lenient, the line is counted.

Values: `0x4020ae46 /* KVM_SET_USER_MEMORY_REGION */` (-X verbose) keeps the number, the bare
`KVM_SET_USER_MEMORY_REGION` (default) the name; `9<anon_inode:kvm-vm>` (-yy) keeps the fd;
`{slot=0, ...}` becomes a dict, `[...]` a list, and strace's own abbreviation `...` is `ELIDED`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

from conformance.model.errors import ConformanceError

StraceValue: TypeAlias = "int | str | list[StraceValue] | dict[str, StraceValue]"
ELIDED = "..."  # what strace prints for what it left out (`entries=[...]` without -v)

# Every pattern here is linear in the line's length: no two unbounded repetitions may compete
# for the same characters (a run of 40k spaces took 21 s with `.*?\s*<unfinished`), and the
# numbers they take are short enough to convert (a pid has at most 10 digits).
_PREFIX = re.compile(r"^(?:\[pid\s+(?P<bracketed>\d{1,10})\]|(?P<bare>\d{1,10}))\s+")
_COMPLETE = re.compile(
    r"^(?P<name>\w+)\((?P<args>.*)\)[ \t]++=[ \t]++(?P<ret>-?(?:0x[0-9a-f]{1,16}|\d{1,20})|\?)"
    r"(?![0-9a-fx])(?P<rest>.*)$"
)
_UNFINISHED = re.compile(r"^(?P<name>\w+)\((?P<args>.*)<unfinished \.\.\.>$")
_RESUMED = re.compile(r"^<\.\.\. (?P<name>\w+) resumed>(?P<rest>.*)$")
_ERRNO = re.compile(r"^\s+(?P<errno>E[A-Z0-9]+)\b")
# Signals, exits, strace's own notes, and a call cut short by the process's exit.
_NOT_A_CALL = re.compile(
    r"^(?:--- .* ---|\+\+\+ .* \+\+\+|strace: .*"
    r"|<\.\.\. \w+ resumed> <unfinished \.\.\.>\) = \?.*)$"
)
_LEADING_FD = re.compile(r"^\s*(?P<fd>-?\d{1,10})\b")
_FD_PATH = re.compile(
    r"(?<![\d-])(?P<fd>-?\d{1,10})<(?:[^<>]|<[^<>]*>)*+>"
)  # 9<anon_inode:kvm-vm>, 3</dev/kvm<char 10:232>>
_MAX_DEPTH = 32  # structs inside structs: far deeper than any KVM argument
_TOKEN = re.compile(r'\s*("(?:[^"\\]|\\.)*"(?:\.\.\.)?|[{}\[\](),=|]|[^{}\[\](),=|\s]+)')


class StraceSyntaxError(ConformanceError):
    """A line of an strace log that is not a system call, a signal or an exit notice."""

    def __init__(self, path: Path, line: int, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}")
        self.path = path
        self.line = line


@dataclass(frozen=True, slots=True)
class StraceCall:
    line: int  # where the call completed (its `resumed` half, if split)
    tid: int | None  # None: a log written without -f
    name: str
    argument_text: str  # parsed on demand (`arguments`): only KVM-related calls need it
    ret: int | None  # None: `= ?`
    errno: str | None

    def first_fd(self) -> int | None:
        """The first argument as an fd number, read without parsing the rest."""
        match = _LEADING_FD.match(self.argument_text)
        return int(match["fd"]) if match else None

    def arguments(self, at_least: int = 0) -> list[StraceValue]:
        """The parsed argument list, of at least `at_least` arguments; ValueError when strace's
        text is not understood."""
        try:
            arguments = parse_arguments(self.argument_text)
        except IndexError:
            raise ValueError(f"unterminated argument list: {self.argument_text[:80]!r}") from None
        if len(arguments) < at_least:
            raise ValueError(
                f"{self.name} with {len(arguments)} argument(s), where strace writes {at_least}"
            )
        return arguments


@dataclass(slots=True)
class ParsedLog:
    calls: list[StraceCall]
    skipped_lines: int  # malformed lines passed over in lenient mode


def parse_log(path: Path, text: str, *, lenient: bool = False) -> ParsedLog:
    calls: list[StraceCall] = []
    skipped = 0
    for line in _whole_calls(text):
        try:
            call = _parse_call(line)
        except ValueError as error:
            if not lenient:
                raise StraceSyntaxError(path, line.number, str(error)) from None
            skipped += 1
            continue
        if call is not None:
            calls.append(call)
    return ParsedLog(calls, skipped)


@dataclass(frozen=True, slots=True)
class _Line:
    number: int
    tid: int | None
    body: str  # a whole call, its split halves joined
    problem: str | None = None


def _whole_calls(text: str) -> Iterator[_Line]:
    pending: dict[int | None, str] = {}  # per thread: the start of its unfinished call
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip()
        if not line:
            continue
        prefix = _PREFIX.match(line)
        tid = int(prefix["bracketed"] or prefix["bare"]) if prefix else None
        body = line[prefix.end() :] if prefix else line
        unfinished = _UNFINISHED.match(body)
        resumed = None if _NOT_A_CALL.match(body) else _RESUMED.match(body)
        if unfinished is not None:
            pending[tid] = f"{unfinished['name']}({unfinished['args'].rstrip()}"
        elif resumed is not None:
            start = pending.pop(tid, None)
            if start is None or not start.startswith(resumed["name"] + "("):
                problem = f"`{resumed['name']} resumed` without its start"
                yield _Line(number, tid, body, problem)
            else:
                yield _Line(number, tid, start + resumed["rest"])
        else:
            yield _Line(number, tid, body)


def _parse_call(line: _Line) -> StraceCall | None:
    if line.problem is not None:
        raise ValueError(line.problem)
    if _NOT_A_CALL.match(line.body):
        return None
    complete = _COMPLETE.match(line.body)
    if complete is None:
        raise ValueError(f"not a system call, signal or exit line: {line.body[:80]!r}")
    ret = None if complete["ret"] == "?" else int(complete["ret"], 0)
    errno = _ERRNO.match(complete["rest"]) if ret is not None and ret < 0 else None
    return StraceCall(
        line.number,
        line.tid,
        complete["name"],
        complete["args"],
        ret,
        errno["errno"] if errno else None,
    )


def parse_arguments(text: str) -> list[StraceValue]:
    """A call's argument list: comments dropped, -yy paths dropped, values parsed."""
    cleaned = _FD_PATH.sub(lambda match: match["fd"], _without_comments(text))
    tokens = _TOKEN.findall(cleaned)
    arguments: list[StraceValue] = []
    position = 0
    while position < len(tokens):
        value, position = _value(tokens, position)
        arguments.append(value)
        if position < len(tokens):
            _expect(tokens, position, ",")
            position += 1
    return arguments


def _without_comments(text: str) -> str:
    """`0x3 /* PROT_READ|PROT_WRITE */` -> `0x3`: each comment with the blanks before it. Found
    with str.find, not a regular expression: an unclosed `/*` is seen once, not once per start."""
    kept: list[str] = []
    position = 0
    while (start := text.find("/*", position)) >= 0:
        end = text.find("*/", start + 2)
        if end < 0:
            break  # unclosed: left in place (the argument parser then says what is wrong)
        kept.append(text[position:start].rstrip())
        position = end + 2
    kept.append(text[position:])
    return "".join(kept)


def _value(tokens: list[str], position: int, depth: int = 0) -> tuple[StraceValue, int]:
    if position >= len(tokens):
        raise ValueError("a value is missing")
    if depth > _MAX_DEPTH:
        raise ValueError(f"values nested deeper than {_MAX_DEPTH} levels")
    token = tokens[position]
    if token == "{":
        fields: dict[str, StraceValue] = {}
        position += 1
        while tokens[position] != "}":
            if tokens[position] == ELIDED:
                position += 1
            else:
                key = tokens[position]
                _expect(tokens, position + 1, "=")
                fields[key], position = _value(tokens, position + 2, depth + 1)
            if tokens[position] == ",":
                position += 1
        return fields, position + 1
    if token == "[":
        items: list[StraceValue] = []
        position += 1
        while tokens[position] != "]":
            item, position = _value(tokens, position, depth + 1)
            items.append(item)
            if tokens[position] == ",":
                position += 1
        return items, position + 1
    # A flag set (`PROT_READ|PROT_WRITE`) stays one string; everything else is one token.
    while position + 2 < len(tokens) and tokens[position + 1] == "|":
        token += "|" + tokens[position + 2]
        position += 2
    return _scalar(token), position + 1


def _scalar(token: str) -> StraceValue:
    try:
        return int(token, 0)
    except ValueError:
        return token


def _expect(tokens: list[str], position: int, wanted: str) -> None:
    found = tokens[position] if position < len(tokens) else "the end"
    if found != wanted:
        raise ValueError(f"expected {wanted!r}, found {found!r}")
