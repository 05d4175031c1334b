"""What a comparison compares of a call: the VMM's decisions, never the fields that are not.

Every comparison (regression, conformance; `check`, `diff`, the pytest plugin) compares two calls
through `decide` (regression.field_differences calls it): both calls with every field the ABI's
"not a decision" table (abi/not_decisions.py) finds in them taken out, and the list of what was
taken out where the two sides differed (`LeftOut`), so that a report can say how many
differences it left out and why. A field is taken out of both calls when it is not a decision
in either: QEMU's stack bytes in SREGS2's PDPTRs say nothing about a VMM that passes valid
ones, and the `flags` that tell the two apart are compared.

The table names fields by their C struct; a call's fields are found in it by walking the
normalized call alongside the ioctl's struct layout (anonymous members merged as normalization
merges them, a union by the member the call holds, array elements by position or, in the lists
compared as sets, by their key). A register page in the raw form documents held before pages
were decoded is decoded first (model/register_pages.py), so old and new documents compare.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from conformance.abi.ioctls import IOCTLS
from conformance.abi.not_decisions import (
    BY_STRUCT,
    AnyBitSet,
    NotADecision,
    NotEqual,
    WithinCount,
    row,
)
from conformance.compare.keyed_sets import element_key
from conformance.model.document import Entry, TraceCall, Value
from conformance.model.register_pages import DECODED_FIELDS, PAGED_STRUCTS, decode_normalized

_SECTIONS = ("in", "out")
_Type = Any  # a ctypes struct/union/array/scalar class, or a register page's name


@dataclass(frozen=True, slots=True)
class LeftOut:
    """A field left out of a comparison that differed between the two calls."""

    path: str  # as a difference would name it: in.channels[1].count_load_time
    call: str  # the call's name: KVM_SET_PIT2
    row: NotADecision
    expected: Value | None  # None: the field is absent on that side
    actual: Value | None


@dataclass(frozen=True, slots=True)
class _Found:
    path: str
    container: str  # the path of the struct or array that holds it
    row: NotADecision
    value: Value
    applies: bool  # the row's condition leaves this field out


@dataclass(frozen=True, slots=True)
class Decided:
    """Two calls as a comparison sees them."""

    expected: TraceCall
    actual: TraceCall
    left_out: list[LeftOut]
    # Fields that are a decision on one side only (a slot deleted against one registered):
    # left out of both, but evidence the two calls are not the same call, for alignment.
    one_sided: int = 0


def decide(expected: TraceCall, actual: TraceCall) -> Decided:
    """Both calls as compared: without the fields that are not a decision in either, the
    differences that left out, and how many fields were a decision on one side only."""
    request = expected.name
    if request != actual.name or not _has_rows(request):
        return Decided(expected, actual, [])
    theirs, ours = _decoded(expected), _decoded(actual)
    found_theirs, found_ours = _found(request, theirs.entry), _found(request, ours.entry)
    out = {f.path: f.row for f in (*found_theirs.values(), *found_ours.values()) if f.applies}
    if not out:
        return Decided(theirs, ours, [])
    # A field only one side has counts when the struct holding it is on both sides (a reserved
    # word one side left non-zero); inside a CPUID entry only one side has, the entry differs.
    shared = {f.container for f in found_theirs.values()} & {
        f.container for f in found_ours.values()
    }
    left_out = []
    one_sided = 0
    for path, why in out.items():
        before, after = found_theirs.get(path), found_ours.get(path)
        either = before or after
        before_value = before.value if before is not None else None
        after_value = after.value if after is not None else None
        if before is not None and after is not None and before.applies != after.applies:
            one_sided += 1
        if before_value != after_value and either is not None and either.container in shared:
            left_out.append(LeftOut(path, request, why, before_value, after_value))
    removed = frozenset(out)
    return Decided(_without(theirs, removed), _without(ours, removed), left_out, one_sided)


def left_out_summary(left_out: list[LeftOut]) -> list[tuple[int, NotADecision, str]]:
    """(how many, row, one example call and path) per row, most frequent first."""
    counts: dict[NotADecision, list[LeftOut]] = {}
    for item in left_out:
        counts.setdefault(item.row, []).append(item)
    ordered = sorted(
        counts.items(), key=lambda pair: (-len(pair[1]), pair[0].struct, pair[0].field)
    )
    return [(len(items), why, f"{items[0].call} {items[0].path}") for why, items in ordered]


# -- finding the table's fields in a call ---------------------------------------------------


@functools.cache
def _has_rows(request: str) -> bool:
    spec = IOCTLS.get(request)
    return spec is not None and spec.struct is not None and _reaches_rows(spec.struct)


@functools.cache
def _reaches_rows(node: _Type) -> bool:
    """Whether any row of the table lies at or below this type."""
    if isinstance(node, str):
        return node in BY_STRUCT
    if issubclass(node, ctypes.Array):
        return _reaches_rows(node._type_)
    if not issubclass(node, ctypes.Structure | ctypes.Union):
        return False
    if node.__name__ in BY_STRUCT:
        return True
    return any(
        (node.__name__, name) in DECODED_FIELDS or _reaches_rows(member)
        for name, member, *_bits in node._fields_
    )


def _decoded(call: TraceCall) -> TraceCall:
    """The call with register pages still in their raw form decoded."""
    spec = IOCTLS.get(call.name)
    struct_name = spec.arg_type if spec is not None else None
    if struct_name not in PAGED_STRUCTS:
        return call
    entry = dict(call.entry)
    for section in _SECTIONS:
        fields = entry.get(section)
        if isinstance(fields, dict):
            entry[section] = decode_normalized(struct_name, fields)
    return TraceCall(entry, call.line)


def _found(request: str, entry: Entry) -> dict[str, _Found]:
    spec = IOCTLS[request]
    found: dict[str, _Found] = {}
    for section in _SECTIONS:
        fields = entry.get(section)
        if isinstance(fields, dict):
            for item in _walk(request, section, fields, spec.struct):
                found[item.path] = item
    return found


def _walk(request: str, path: str, node: Mapping[str, Value], kind: _Type) -> Iterator[_Found]:
    """The table's fields in `node`, a struct of type `kind`, with each one's path."""
    kind_name = kind if isinstance(kind, str) else kind.__name__
    for name, value in node.items():
        here = f"{path}.{name}"
        hit = row(kind_name, name)
        if hit is not None and isinstance(hit.unless, WithinCount):
            yield from _counted(here, hit, hit.unless, node, value)
            continue
        if hit is not None and not _holds(hit, node):
            yield _Found(here, path, hit, value, applies=True)
            continue
        if hit is not None:  # a decision here, but a row may lie below
            yield _Found(here, path, hit, value, applies=False)
        child = DECODED_FIELDS.get((kind_name, name)) or _member(kind, name)
        if child is not None:
            yield from _below(request, here, value, child)


def _below(request: str, path: str, value: Value, kind: _Type) -> Iterator[_Found]:
    if isinstance(value, dict) and (isinstance(kind, str) or issubclass(kind, ctypes.Structure)):
        yield from _walk(request, path, value, kind)
    elif isinstance(value, dict) and issubclass(kind, ctypes.Union):
        for member, content in value.items():  # the member the call holds (chip.ioapic)
            member_type = _member(kind, member)
            if member_type is not None:
                yield from _below(request, f"{path}.{member}", content, member_type)
    elif isinstance(value, list) and not isinstance(kind, str) and issubclass(kind, ctypes.Array):
        for position, item in enumerate(value):
            name = element_key(request, path, item) or str(position)
            yield from _below(request, f"{path}[{name}]", item, kind._type_)


def _counted(
    path: str, hit: NotADecision, within: WithinCount, node: Mapping[str, Value], value: Value
) -> Iterator[_Found]:
    """An array's elements past the count the kernel reads (kvm_xcrs.xcrs past nr_xcrs)."""
    count = node.get(within.field)
    if not isinstance(value, list) or not isinstance(count, int):
        return
    for position, item in enumerate(value):
        yield _Found(f"{path}[{position}]", path, hit, item, applies=position >= count)


def _holds(hit: NotADecision, node: Mapping[str, Value]) -> bool:
    """Whether the row's `unless` holds for this struct instance (the field is a decision)."""
    condition = hit.unless
    if condition is None:
        return False
    value = node.get(condition.field)
    if not isinstance(value, int):
        return True  # the condition cannot be read: keep the field, compare it
    if isinstance(condition, AnyBitSet):
        return bool(value & condition.mask)
    if isinstance(condition, NotEqual):
        return value != condition.value
    return True  # WithinCount is judged per element (_counted)


@functools.cache
def _member(kind: _Type, name: str) -> _Type | None:
    """The type of member `name` of a struct or union, looked for in anonymous members too
    (normalization merges them into their parent, as C code spells them)."""
    if isinstance(kind, str) or not issubclass(kind, ctypes.Structure | ctypes.Union):
        return None
    anonymous = getattr(kind, "_anonymous_", ())
    for member, member_type, *_bits in kind._fields_:
        if member == name:
            return member_type
        if member in anonymous:
            inner = _member(member_type, name)
            if inner is not None:
                return inner
    return None


# -- taking them out --------------------------------------------------------------------------


def _without(call: TraceCall, removed: frozenset[str]) -> TraceCall:
    request = call.name
    entry = {
        key: _pruned(request, key, value, removed) if key in _SECTIONS else value
        for key, value in call.entry.items()
    }
    return TraceCall(entry, call.line)


def _pruned(request: str, path: str, value: Value, removed: frozenset[str]) -> Value:
    """`value` without the paths in `removed`, elements named as `_below` names them."""
    if isinstance(value, dict):
        return {
            key: _pruned(request, f"{path}.{key}", item, removed)
            for key, item in value.items()
            if f"{path}.{key}" not in removed
        }
    if isinstance(value, list):
        kept: list[Value] = []
        for position, item in enumerate(value):
            named = f"{path}[{element_key(request, path, item) or position}]"
            if f"{path}[{position}]" not in removed and named not in removed:
                kept.append(_pruned(request, named, item, removed))
        return kept
    return value
