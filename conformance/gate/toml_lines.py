"""Where each key of a TOML document is defined: the line numbers tomllib does not give.

tomllib is the parser: every value the configuration reads is tomllib's. This module only maps
key paths to the 1-based line where they are written, so that an error about a value can say
`pyproject.toml:14`. It reads a document tomllib has already accepted, so it need not diagnose
anything; it follows TOML's grammar far enough to never mistake a line inside a multi-line
string or array for a key: table headers (`[a.b]`, `[[a.b]]`, quoted and dotted keys), key/value
lines, strings of all four kinds, arrays and inline tables, nested. Array items are keyed by
their index, array-of-table elements likewise:

    [tool.kvm-conformance.scenarios.boot]      -> ("tool", "kvm-conformance", "scenarios", "boot")
    command = ["./vmm",                        -> (..., "boot", "command"), (..., "command", 0)
               "guest.bin"]                    -> (..., "command", 1)

No TOML library for Python keeps positions (tomllib, tomli, tomlkit, toml): hence this.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping

KeyPath = tuple[str | int, ...]

_BARE_KEY = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_SCALAR_ENDS = frozenset(",]}\n#")


def key_lines(text: str) -> dict[KeyPath, int]:
    """Every table, key and array item of `text` (valid TOML) -> the line it starts on."""
    return _Scanner(text).scan()


def line_of(lines: Mapping[KeyPath, int], path: KeyPath) -> int | None:
    """The line of `path`, or of the nearest enclosing key that has one."""
    for length in range(len(path), 0, -1):
        found = lines.get(path[:length])
        if found is not None:
            return found
    return None


class _Scanner:
    def __init__(self, text: str) -> None:
        self._text = text
        self._newlines = [index for index, char in enumerate(text) if char == "\n"]
        self._at = 0
        self._lines: dict[KeyPath, int] = {}
        self._table_arrays: dict[KeyPath, int] = {}  # [[a.b]] -> elements seen so far

    def scan(self) -> dict[KeyPath, int]:
        table: KeyPath = ()
        while True:
            self._skip_blank(newlines=True)
            if self._at >= len(self._text):
                return self._lines
            line = self._line()
            if self._text.startswith("[[", self._at):
                self._at += 2
                table = self._array_table(self._key(), line)
                self._at = self._text.index("]]", self._at) + 2
            elif self._peek() == "[":
                self._at += 1
                table = self._record(self._resolved(self._key()), line)
                self._at = self._text.index("]", self._at) + 1
            else:
                self._key_value(table)

    # -- keys ------------------------------------------------------------------------------

    def _key_value(self, table: KeyPath) -> None:
        line = self._line()
        key = self._record((*table, *self._key()), line, start=len(table))
        self._skip_blank()
        self._at += 1  # the "="
        self._value(key)

    def _key(self) -> tuple[str, ...]:
        """A dotted key: bare or quoted parts with optional blanks around the dots."""
        parts: list[str] = []
        while True:
            self._skip_blank()
            char = self._peek()
            if char in ('"', "'"):
                parts.append(self._quoted_key(char))
            else:
                start = self._at
                while self._peek() in _BARE_KEY:
                    self._at += 1
                parts.append(self._text[start : self._at])
            self._skip_blank()
            if self._peek() != ".":
                return tuple(parts)
            self._at += 1

    def _quoted_key(self, quote: str) -> str:
        start = self._at
        self._skip_string(quote)
        raw = self._text[start + 1 : self._at - 1]
        if quote == "'":
            return raw
        # Basic strings take escapes; keys that need them are rare, the common ones decoded.
        return raw.replace('\\"', '"').replace("\\\\", "\\")

    def _resolved(self, key: tuple[str, ...]) -> KeyPath:
        """A header's path, each array of tables along it replaced by its latest element."""
        path: KeyPath = ()
        for part in key:
            path = (*path, part)
            if path in self._table_arrays:
                path = (*path, self._table_arrays[path] - 1)
        return path

    def _array_table(self, key: tuple[str, ...], line: int) -> KeyPath:
        path = (*self._resolved(key[:-1]), key[-1])
        count = self._table_arrays.get(path, 0)
        self._table_arrays[path] = count + 1
        return self._record((*path, count), line)

    def _record(self, path: KeyPath, line: int, start: int = 0) -> KeyPath:
        """`path` and the tables it implies (`[a.b.c]` defines a and a.b) start at `line`,
        unless written earlier; the prefix `path[:start]` is the current table's, already in."""
        for length in range(max(start, 1), len(path) + 1):
            self._lines.setdefault(path[:length], line)
        return path

    # -- values ----------------------------------------------------------------------------

    def _value(self, path: KeyPath) -> None:
        self._skip_blank()
        char = self._peek()
        if char in ('"', "'"):
            self._skip_string(char)
        elif char == "[":
            self._array(path)
        elif char == "{":
            self._inline_table(path)
        else:
            while self._at < len(self._text) and self._text[self._at] not in _SCALAR_ENDS:
                self._at += 1

    def _array(self, path: KeyPath) -> None:
        self._at += 1  # "["
        index = 0
        while True:
            self._skip_blank(newlines=True)
            if self._peek() == "]":
                self._at += 1
                return
            if self._peek() == ",":
                self._at += 1
                continue
            self._lines.setdefault((*path, index), self._line())
            self._value((*path, index))
            index += 1

    def _inline_table(self, path: KeyPath) -> None:
        self._at += 1  # "{"
        while True:
            self._skip_blank(newlines=True)
            if self._peek() == "}":
                self._at += 1
                return
            if self._peek() == ",":
                self._at += 1
                continue
            self._key_value(path)

    def _skip_string(self, quote: str) -> None:
        triple = quote * 3
        if self._text.startswith(triple, self._at):
            end = self._at + 3
            while True:
                end = self._text.index(triple, end)
                if quote == "'" or not _escaped(self._text, end):
                    break
                end += 1
            # Up to two quotes may end the content right before the closing three.
            while self._text.startswith(quote, end + 3):
                end += 1
            self._at = end + 3
            return
        end = self._at + 1
        while self._text[end] != quote or (quote == '"' and _escaped(self._text, end)):
            end += 1
        self._at = end + 1

    # -- positions -------------------------------------------------------------------------

    def _skip_blank(self, *, newlines: bool = False) -> None:
        blanks = " \t\r\n" if newlines else " \t"
        while self._at < len(self._text):
            char = self._text[self._at]
            if char in blanks:
                self._at += 1
            elif char == "#":
                newline = self._text.find("\n", self._at)
                self._at = len(self._text) if newline < 0 else newline
                if not newlines:
                    return
            else:
                return

    def _peek(self) -> str:
        return self._text[self._at] if self._at < len(self._text) else ""

    def _line(self) -> int:
        return bisect.bisect_left(self._newlines, self._at) + 1


def _escaped(text: str, position: int) -> bool:
    """Whether the character at `position` follows an odd number of backslashes."""
    backslashes = 0
    while position - backslashes - 1 >= 0 and text[position - backslashes - 1] == "\\":
        backslashes += 1
    return backslashes % 2 == 1
