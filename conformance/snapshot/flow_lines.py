"""One-line flow calls read without a YAML parser: the fast path of loading a trace.

A trace is mostly calls written `  - {call: ioctl, fd: vcpu0, req: KVM_RUN, exit: {...}}`, one
per line. Composing those with libyaml costs ~3 µs per scalar (a 100 MB trace: minutes and
gigabytes of nodes); this reads the small part of YAML's flow syntax that snapshot dumps use,
with regular expressions and one pass over the tokens.

Exactness comes first: `flow_mapping(text)` returns the value YAML (1.1, as PyYAML and libyaml
resolve it) gives the same text, or None when the text uses anything outside this subset (an
escape in a double-quoted string, a comment, a plain scalar YAML could resolve as a float, a
bool, a date, an octal or sexagesimal int...). None is never an error: the loader then hands
that line to libyaml, which reads it (or reports what is wrong with it, with its line).
Tests hold the two to the same values on mutated traces.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Final, cast

from conformance.model.document import Hex, Value
from conformance.snapshot.schema import INT_MAX, INT_MIN, MAX_DEPTH

# Punctuation as the dumper writes it (", " and ": "), quoted scalars on one line, and plain
# scalars that start with a character YAML cannot read as an indicator and hold no flow
# indicator, ':' or space. Whatever else a line holds is left unmatched, and the line is not
# taken (the matched lengths do not add up to the line's).
# Only printable ASCII is taken: YAML reads some other characters (U+0085, U+2028) as line
# breaks, and a line holding one is left to libyaml.
_TOKEN: Final = re.compile(
    r"[{}\[\]]|, |: |'(?:[ -&(-~]|'')*'|\"[ !#-\[\]-~]*\""
    r"|(?:[A-Za-z0-9_./+]|-(?=[A-Za-z0-9_]))[!-+\--9;-Z\\^-z|~]*"
)
_DECIMAL: Final = re.compile(r"-?(?:0|[1-9][0-9]{0,19})")
_HEXADECIMAL: Final = re.compile(r"-?0x[0-9a-fA-F]{1,16}")
# Plain scalars starting with a letter are strings to YAML 1.1, except these bools and nulls.
_RESOLVED_WORDS: Final = frozenset(
    [
        *("yes", "Yes", "YES", "no", "No", "NO", "true", "True", "TRUE"),
        *("false", "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF"),
        *("null", "Null", "NULL"),
    ]
)
_NOT_TAKEN: Final = object()
_CACHE_LIMIT: Final = 1 << 18

# The quicker way, for a line without quotes or backslashes: every token between the
# punctuation the dumper writes ("{", "}", "[", "]", ", ", ": ") is quoted with str.replace,
# the json module's C parser builds the structure, and each token (all strings now) is then
# read as YAML would read it, or refused (`_scalar_value`). A token holding anything YAML would
# read otherwise (a space, a comma, a colon, a "#"...) is refused there, so the structure JSON
# found is the one YAML finds.
_QUOTING: Final = (
    (", ", '","'),
    (": ", '":"'),
    ("{", '{"'),
    ("[", '["'),
    ("}", '"}'),
    ("]", '"]'),
    ('"{', "{"),
    ('"[', "["),
    ('}"', "}"),
    (']"', "]"),
    ('{""}', "{}"),
    ('[""]', "[]"),
)
_PLAIN_TOKEN: Final = re.compile(r"(?:[A-Za-z0-9_./+]|-(?=[A-Za-z0-9_]))[!#-+\--9;-Z^-z|~]*")


class _NotJson(Exception):
    """The quicker way does not apply to this line."""


class FlowReader:
    """Reads flow lines; remembers the values of scalars it has seen (a trace repeats few)."""

    def __init__(self) -> None:
        self._scalars: dict[str, object] = {}

    def flow_mapping(self, text: str) -> dict[str, Value] | None:
        """The mapping `text` (a whole `{...}` on one line) holds, or None (see module doc)."""
        # The bracket count bounds the nesting depth, which the json module does not check.
        if (
            "'" not in text
            and '"' not in text
            and "\\" not in text
            and text.count("{") + text.count("[") + 3 < MAX_DEPTH
        ):
            quoted = text
            for old, new in _QUOTING:
                quoted = quoted.replace(old, new)
            try:
                value = json.loads(quoted, object_pairs_hook=self._json_mapping)
            except (ValueError, _NotJson):
                return None
            return value if isinstance(value, dict) else None
        tokens = _TOKEN.findall(text)
        if sum(map(len, tokens)) != len(text) or not tokens or tokens[0] != "{":
            return None
        value = self._parse(tokens)
        return value if isinstance(value, dict) else None

    def _parse(self, tokens: list[str]) -> Value | None:
        # An explicit stack instead of recursion; `expect` names what may come next.
        holder: list[Value] = []  # where the root value goes
        stack: list[dict[str, Value] | list[Value]] = [holder]
        key = ""  # the key waiting for its value, in a mapping
        expect = "value"  # value | key | colon | separator
        for token in tokens:
            top = stack[-1]
            if expect == "separator":
                if len(stack) == 1:
                    return None  # something after the root value
                if token == ", ":
                    expect = "key" if isinstance(top, dict) else "value"
                elif token == ("}" if isinstance(top, dict) else "]"):
                    stack.pop()
                else:
                    return None
            elif expect == "colon":
                if token != ": ":
                    return None
                expect = "value"
            elif token in ("}", "]"):  # only an empty collection may close here
                if top or len(stack) == 1 or token != ("}" if isinstance(top, dict) else "]"):
                    return None
                stack.pop()
                expect = "separator"
            elif expect == "key":
                scalar = self._scalar(token)
                if not isinstance(scalar, str) or scalar in top:
                    return None  # a key YAML would not read as a string, or a duplicate
                key, expect = scalar, "colon"
            else:
                value = self._value(token)
                if value is None:
                    return None
                if isinstance(top, dict):
                    top[key] = value
                else:
                    top.append(value)
                if isinstance(value, dict | list):
                    # A call sits three levels deep in its document (the document, threads, the
                    # thread's list): past MAX_DEPTH in all, libyaml's pass reports it.
                    if len(stack) + 3 >= MAX_DEPTH:
                        return None
                    stack.append(value)
                    expect = "key" if isinstance(value, dict) else "value"
                else:
                    expect = "separator"
        return holder[0] if len(stack) == 1 and expect == "separator" and holder else None

    # The hook json calls for every mapping: the hot loop of loading a trace, so written for
    # speed (locals, one dict lookup per token once its value is known).
    def _json_mapping(self, pairs: list[tuple[str, object]]) -> dict[str, Value]:
        scalars = self._scalars
        mapping: dict[str, object] = {}
        for key, value in pairs:
            name = scalars.get(key)
            if name is None:
                name = self._learn(key)
            known: object
            if isinstance(value, str):
                known = scalars.get(value)
                if known is None:
                    known = self._learn(value)
            elif isinstance(value, list):
                known = self._json_list(value)
            else:
                known = value  # a mapping this hook made
            if not isinstance(name, str) or known is _NOT_TAKEN:
                raise _NotJson  # a key YAML reads as no string, or a token it reads otherwise
            mapping[name] = known
        if len(mapping) != len(pairs):
            raise _NotJson  # a duplicate key
        return cast(dict[str, Value], mapping)

    def _json_list(self, items: list[object]) -> list[Value]:
        values: list[object] = []
        for item in items:
            known: object
            if isinstance(item, str):
                known = self._scalars.get(item)
                if known is None:
                    known = self._learn(item)
            elif isinstance(item, list):
                known = self._json_list(item)
            else:
                known = item
            if known is _NOT_TAKEN:
                raise _NotJson
            values.append(known)
        return cast(list[Value], values)

    def _value(self, token: str) -> Value | None:
        if token == "{":
            return {}
        if token == "[":
            return []
        scalar = self._scalar(token)
        return None if scalar is _NOT_TAKEN else scalar  # type: ignore[return-value]

    def _learn(self, token: str) -> object:
        value = _scalar_value(token) if _PLAIN_TOKEN.fullmatch(token) else _NOT_TAKEN
        self._remember(token, value)
        return value

    def _scalar(self, token: str) -> object:
        known = self._scalars.get(token)
        if known is not None:
            return known
        value = _scalar_value(token)
        self._remember(token, value)
        return value

    def _remember(self, token: str, value: object) -> None:
        if len(self._scalars) >= _CACHE_LIMIT:
            self._scalars.clear()
        # Interned: the same key or name in every call of a long trace is one string.
        self._scalars[sys.intern(token) if len(token) <= 32 else token] = (
            sys.intern(value) if isinstance(value, str) and len(value) <= 32 else value
        )


def _scalar_value(token: str) -> object:
    """A token's value: a str, an int (Hex when written 0x...), or _NOT_TAKEN."""
    first = token[0]
    if first == "'":
        return token[1:-1].replace("''", "'")
    if first == '"':
        return token[1:-1]
    if token in ("{", "}", "[", "]", ", ", ": "):
        return _NOT_TAKEN
    if first.isalpha() or first in "_/":
        return _NOT_TAKEN if token in _RESOLVED_WORDS else token
    if _HEXADECIMAL.fullmatch(token):
        number = int(token, 16)
        return Hex(number) if INT_MIN <= number <= INT_MAX else _NOT_TAKEN
    if _DECIMAL.fullmatch(token):
        number = int(token)
        return number if INT_MIN <= number <= INT_MAX else _NOT_TAKEN
    # Anything else starting with a digit, a sign or a dot may be a float, a date, an octal,
    # sexagesimal or underscored int to YAML 1.1: libyaml and the loader's checks decide.
    return _NOT_TAKEN
