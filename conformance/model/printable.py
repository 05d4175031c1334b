"""Text that came from an input, made safe to print: the one escaping function of every output.

A trace or configuration file is input: a string in it may hold an escape sequence that would
recolour a terminal, a bidi override that reorders what a reviewer reads, or a line break that
forges a report line. Every renderer (terminal, JSON, HTML, SARIF) passes input-derived strings
through `shown` before writing them; `shown_text` does the same for a whole report (its own
line breaks and tabs kept) and `shown_data` for JSON-ready data (a finding record, a SARIF log).
"""

from __future__ import annotations

import unicodedata

# Unicode's bidirectional formatting characters (UAX #9): embeddings, overrides and isolates.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")


def shown(text: str) -> str:
    """`text` with control characters (C0 with tab and newline, DEL, C1) and bidi formatting
    characters written as escapes (`\\x1b`, `\\u202e`); printable text is unchanged."""
    if text.isprintable():
        return text
    return "".join(_escaped(character) for character in text)


def shown_text(text: str) -> str:
    """A whole report (text we laid out around input-derived strings): as `shown`, but its
    own line breaks and tabs kept."""
    if text.isprintable():
        return text
    return "\n".join(
        "\t".join(shown(part) for part in line.split("\t")) for line in text.split("\n")
    )


def shown_data(data: object) -> object:
    """JSON-ready data with every string in it (keys too) passed through `shown`."""
    if isinstance(data, str):
        return shown(data)
    if isinstance(data, dict):
        return {shown_data(key): shown_data(item) for key, item in data.items()}
    if isinstance(data, list | tuple):
        return [shown_data(item) for item in data]
    return data


def _escaped(character: str) -> str:
    code = ord(character)
    if code < 0x20 or 0x7F <= code < 0xA0:
        return f"\\x{code:02x}"
    if character in _BIDI_CONTROLS or unicodedata.category(character) in ("Cc", "Cf"):
        return f"\\u{code:04x}"
    return character
