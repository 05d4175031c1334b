"""The trace format (docs/trace-format.md) as data: what each key of a document holds.

The loader (snapshot/format.py) turns YAML into plain values (ints, strings, lists, mappings:
YAML's own syntax and number rules are checked there); this module says which of those values
the format allows where. A table per level: `TOP_LEVEL` for the document's keys, `CALL_FIELDS`
for a call's, and value kinds (`INT`, `NAME`, `ROLE`, `TEXT`, `STRUCT`...) for what a key holds.
A key the format adds is one more row; a key inside a call that no row names is allowed with
any plain value (a new key inside calls does not change the schema version).

`check_call(entry)` returns the first problem as (field path, what was expected), or None, so
that the loader can say where in the file it is.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from conformance.model.document import Entry, Value

# A bounded nesting depth: far deeper than any KVM struct, and it keeps every walk over a value
# (here, in comparisons, in reports) far from Python's recursion limit.
MAX_DEPTH = 32
# Ints are 64-bit quantities in the kernel's ABI: registers, addresses, sizes (unsigned) and
# return values, errnos, offsets (signed).
INT_MIN = -(1 << 63)
INT_MAX = (1 << 64) - 1

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A struct field: a C field name, or the offset of a word inside a register page that has no
# name (`region.reserved.0x1a0`, model/register_pages.py).
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|0x[0-9a-f]+")
# Roles, mapping names and addresses: `vcpu0`, `proc0.1/main#2`, `thread:vm`, `ram0+0x1000`,
# `kvm_run:vcpu0`, `vcpu0@0x1000`, `hex:00ff...` byte strings.
_SYMBOL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:+#/@-]*")


@dataclass(frozen=True, slots=True)
class Problem:
    """What is wrong with one value: where it is (a field path inside the call or section,
    "" for the value itself) and what the format expects there."""

    path: str
    message: str


@dataclass(frozen=True, slots=True)
class Kind:
    """A kind of value: what it is called in messages and whether a value is of it."""

    expected: str
    accepts: Callable[[Value], bool]


def _is_int(value: Value) -> bool:
    return isinstance(value, int)


# A long trace holds few distinct strings: each is matched once.
_NAMES: dict[str, bool] = {}
_FIELD_NAMES: dict[str, bool] = {}
_SYMBOLS: dict[str, bool] = {}
_MEMO_LIMIT = 1 << 16


def _is_name(value: Value) -> bool:
    return _matches(value, _NAMES, _NAME)


def _is_field_name(value: Value) -> bool:
    return _matches(value, _FIELD_NAMES, _FIELD_NAME)


def _is_symbol(value: Value) -> bool:
    return _matches(value, _SYMBOLS, _SYMBOL)


def _matches(value: Value, memo: dict[str, bool], pattern: re.Pattern[str]) -> bool:
    if not isinstance(value, str):
        return False
    known = memo.get(value)
    if known is None:
        if len(memo) >= _MEMO_LIMIT:
            memo.clear()
        memo[value] = known = pattern.fullmatch(value) is not None
    return known


INT = Kind("an integer", _is_int)
NAME = Kind("a name (letters, digits and _)", _is_name)
ROLE = Kind("a role or mapping name (such as vcpu0, ram0, thread:vm)", _is_symbol)
TEXT = Kind("a string", lambda value: isinstance(value, str))
POSITIVE_INT = Kind("a positive integer", lambda value: isinstance(value, int) and value >= 1)
NAME_OR_INT = Kind("a name or an integer", lambda value: _is_name(value) or _is_int(value))
ADDRESS = Kind(
    "an address (name+0xOFFSET, unmapped) or an integer",
    lambda value: _is_symbol(value) or _is_int(value),
)
FLAG_LIST = Kind(
    "a list of flag names and integers",
    lambda value: isinstance(value, list) and all(_is_name(i) or _is_int(i) for i in value),
)


_FIELD_EXPECTED = "an integer, a name, or a list or mapping of them"
_FIELD_NAME_EXPECTED = "a field name (letters, digits and _) or a 0x offset"
STRUCT = Kind("a mapping of field names to values", lambda value: isinstance(value, dict))

CALLS = frozenset(
    {
        "open",
        "ioctl",
        "mmap",
        "munmap",
        "mprotect",
        "madvise",
        "mremap",
        "close",
        "dup",
        "dup2",
        "dup3",
        "fcntl",
        "eventfd2",
        "kvm_run_summary",
    }
)

# What each key of a call holds (docs/trace-format.md, "A call"). `req` is a name, or the
# number of a request the ABI does not know; `errno` a name, or the number of one errno does not.
CALL_FIELDS: Mapping[str, Kind] = MappingProxyType(
    {
        "call": NAME,
        "fd": ROLE,
        "req": NAME_OR_INT,
        # A name (KVM_CAP_*), a number, or the host answer it equals (host.tsc_khz).
        "arg": Kind("a name, a host symbol or an integer", lambda v: _is_symbol(v) or _is_int(v)),
        "in": STRUCT,
        "out": STRUCT,
        "exit": STRUCT,
        "ret": ROLE,
        "errno": NAME_OR_INT,
        "repeat": POSITIVE_INT,
        "path": TEXT,
        "flags": FLAG_LIST,
        "prot": FLAG_LIST,
        "addr": ADDRESS,
        "len": INT,
        "old_len": INT,
        "new_len": INT,
        "offset": INT,
        "advice": NAME_OR_INT,
        "initval": INT,
        "undecoded": NAME,
    }
)
# Keys a call cannot go without, by kind of call: what comparisons and rules read first.
REQUIRED_FIELDS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "ioctl": ("fd", "req"),
        "mmap": ("len", "ret"),
        "munmap": ("addr", "len"),
        "close": ("fd",),
        "kvm_run_summary": ("fd",),
    }
)
_SECTIONS = ("in", "out", "exit")


@dataclass(frozen=True, slots=True)
class TopLevelKey:
    kind: Kind
    required: bool = True


# The document's own keys (docs/trace-format.md, "Top level"). `schema` is checked on its own
# (an unknown version gets its own message); `threads` maps roles to lists of calls.
TOP_LEVEL: Mapping[str, TopLevelKey] = MappingProxyType(
    {
        "schema": TopLevelKey(TEXT),
        "source": TopLevelKey(STRUCT),
        "threads": TopLevelKey(STRUCT),
    }
)


def check_call(entry: Entry) -> Problem | None:
    """The first way `entry` departs from the format, or None."""
    kind = entry.get("call")
    if not isinstance(kind, str):
        return Problem("call", "a call needs 'call: <syscall name>'")
    if kind not in CALLS:
        known = ", ".join(sorted(CALLS))
        return Problem("call", f"unknown call {shown(kind)} (the format has: {known})")
    for key in REQUIRED_FIELDS.get(kind, ()):
        if key not in entry:
            return Problem(key, f"a {kind} call needs '{key}'")
    for key, value in entry.items():
        expected = CALL_FIELDS.get(key)
        if expected is None:  # a key this version does not name: any plain field value
            if not _is_name(key):
                return Problem(key, f"field name {shown(key)}: expected {NAME.expected}")
            if not _field_ok(value):
                return _check_field(value, key)
            continue
        if not expected.accepts(value):
            return Problem(key, f"expected {expected.expected}, found {shown(value)}")
        if key in _SECTIONS and not _field_ok(value):
            return _check_struct(value, key)  # type: ignore[arg-type]  # a dict (STRUCT)
    return None


def _field_ok(value: Value) -> bool:
    """Whether a struct field (or a whole struct) holds only what the format allows: the quick
    test; `_check_field` says where it does not."""
    if isinstance(value, dict):
        return all(_is_field_name(key) and _field_ok(item) for key, item in value.items())
    if isinstance(value, list):
        return all(_field_ok(item) for item in value)
    return isinstance(value, int) or _is_symbol(value)


def _check_struct(fields: Mapping[str, Value], path: str) -> Problem | None:
    for key, value in fields.items():
        where = f"{path}.{key}"
        if not _is_field_name(key):
            return Problem(where, f"field name {shown(key)}: expected {_FIELD_NAME_EXPECTED}")
        problem = _check_field(value, where)
        if problem is not None:
            return problem
    return None


def _check_field(value: Value, path: str) -> Problem | None:
    if isinstance(value, dict):
        return _check_struct(value, path)
    if isinstance(value, list):
        for index, item in enumerate(value):
            problem = _check_field(item, f"{path}[{index}]")
            if problem is not None:
                return problem
        return None
    if _is_int(value) or _is_symbol(value):
        return None
    return Problem(path, f"expected {_FIELD_EXPECTED}, found {shown(value)}")


def check_role(role: str) -> str | None:
    """What is wrong with a thread role, or None."""
    return None if _is_symbol(role) else f"thread role {shown(role)}: expected {ROLE.expected}"


def shown(value: Value) -> str:
    """A value in a message: repr (which escapes control characters), cut to a readable size."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
