"""How every report writes a value and marks a row: written once, so the terminal, HTML and JSON
outputs say the same thing the same way."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from conformance.compare.conformance import RowStatus
from conformance.compare.regression import ABSENT, Compared
from conformance.model.document import Value
from conformance.model.flow_yaml import format_value
from conformance.model.printable import shown

__all__ = ["ABSENT_TEXT", "ROW_MARKS", "cut", "json_value", "shown", "value_text"]

ABSENT_TEXT = "(absent)"
ELLIPSIS = "…"

# The mark between the two sides of an aligned row: subject | reference.
ROW_MARKS: Mapping[RowStatus, str] = MappingProxyType(
    {
        RowStatus.SAME: "=",
        RowStatus.DIFFERS: "≠",
        RowStatus.EXTRA: "+",
        RowStatus.SKIPPED: "|",
        RowStatus.ELSEWHERE: "~",
    }
)


def value_text(value: Compared, limit: int | None = None) -> str:
    """A compared value as YAML flow text: 0x1000, [PROT_READ, PROT_WRITE]; (absent). Cut to
    `limit` characters (with …) when given."""
    present = json_value(value)
    text = ABSENT_TEXT if present is None else shown(format_value(present))
    return text if limit is None else cut(text, limit)


def json_value(value: Compared) -> Value | None:
    """A compared value as data, None for a field one side does not have."""
    return None if value is ABSENT or not isinstance(value, int | str | list | dict) else value


def cut(text: str, limit: int) -> str:
    """`text`, or its first `limit` - 1 characters and …"""
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + ELLIPSIS
