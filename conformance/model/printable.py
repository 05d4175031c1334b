"""Text from an input made safe to show: the one place control characters are escaped.

A trace, an strace log or a traced program's own strings can hold anything: an ANSI escape in a
thread name clears the terminal or sets its title when a diff prints it, a carriage return
rewrites the line a reader trusts, a bidi override reorders what a reviewer sees. Every output
(the terminal, JSON, HTML, SARIF) passes what it shows through here: C0 and C1 controls, DEL,
and the Unicode format characters that reorder or break lines become visible `\\x1b`/`\\u202e`
escapes. Tab and newline are kept in whole texts (a report's own layout) and escaped in values.
"""

from __future__ import annotations

import re

_FORMAT_CHARACTERS = "\\x7f-\\x9f\\u061c\\u200e\\u200f\\u2028-\\u202e\\u2066-\\u2069"
_IN_VALUES = re.compile("[\\x00-\\x1f" + _FORMAT_CHARACTERS + "]")
_IN_TEXTS = re.compile("[\\x00-\\x08\\x0b-\\x1f" + _FORMAT_CHARACTERS + "]")  # \t, \n kept


def _escape(match: re.Match[str]) -> str:
    code = ord(match[0])
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(value: str) -> str:
    """One value (a name, a path, a message part): every control character escaped."""
    return _IN_VALUES.sub(_escape, value) if _IN_VALUES.search(value) else value


def printable_text(text: str) -> str:
    """A whole report: as `printable`, but its own line breaks and tabs kept."""
    return _IN_TEXTS.sub(_escape, text) if _IN_TEXTS.search(text) else text


def printable_data(data: object) -> object:
    """JSON-ready data (a finding record, a SARIF log) with every string made printable."""
    if isinstance(data, str):
        return printable(data)
    if isinstance(data, dict):
        return {printable_data(key): printable_data(item) for key, item in data.items()}
    if isinstance(data, list | tuple):
        return [printable_data(item) for item in data]
    return data
