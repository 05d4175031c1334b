"""Values as YAML flow text: the one writer of `{call: ioctl, fd: vm, ...}` lines.

Snapshots lay calls out with it, reports print calls and values with it, and the tracer's raw
YAML stream writes every event with it, so a value reads the same wherever it is shown. Ints
marked `Hex` are written 0x...; everything else as PyYAML's safe dumper writes it.
"""

from __future__ import annotations

import yaml

from conformance.model.document import Entry, Hex, Value

_INT = "tag:yaml.org,2002:int"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"


class FlowMapping(dict[str, Value]):
    """A mapping dumped in flow style: {call: ioctl, fd: vm, ...} on one line."""


class FlowSequence(list[Value]):
    """A short list inside a block mapping, kept on one line: [PROT_READ, PROT_WRITE]."""


class Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: object) -> bool:
        # A value met twice is written twice: trace documents hold no anchors or aliases (a
        # loaded document shares the entries of identical calls, a dump must not show it).
        return True


def _represent_hex(dumper: yaml.SafeDumper, value: Hex) -> yaml.ScalarNode:
    return dumper.represent_scalar(_INT, hex(value))


def _represent_flow(dumper: yaml.SafeDumper, value: FlowMapping) -> yaml.MappingNode:
    return dumper.represent_mapping(_MAP, value.items(), flow_style=True)


def _represent_flow_list(dumper: yaml.SafeDumper, value: FlowSequence) -> yaml.SequenceNode:
    return dumper.represent_sequence(_SEQ, value, flow_style=True)


Dumper.add_representer(Hex, _represent_hex)
Dumper.add_representer(FlowMapping, _represent_flow)
Dumper.add_representer(FlowSequence, _represent_flow_list)


def format_call(entry: Entry) -> str:
    """A call as one line of YAML flow text, for reports."""
    return format_value(FlowMapping(entry))


def format_value(value: Value) -> str:
    """A value as YAML flow text on one line: 0x1000, [PROT_READ, PROT_WRITE], KVM_EXIT_IO."""
    if isinstance(value, dict | list):
        try:
            return _flow(value, set())
        except _NotFast:
            pass
    return _dumped(value)


def _dumped(value: Value) -> str:
    text = yaml.dump(
        value,
        Dumper=Dumper,
        default_flow_style=True,
        sort_keys=False,
        width=1 << 30,
        allow_unicode=True,
    )
    return text.removesuffix("\n...\n").strip()


# The fast path of format_value. The raw trace formats every event, and yaml.dump spends some
# 150 µs on one; this writes the same text directly. Ints and Hex are written as the dumper's
# representers write them; a string's text in a flow collection is taken from yaml.dump itself,
# once per distinct string, so quoting follows PyYAML's rules exactly. What could come out
# differently is left to yaml.dump: other types (bool, dict subclasses), a container met twice
# (written out again each time: no anchors) and strings written over several lines (indented
# by depth).


class _NotFast(Exception):
    """A value the fast path leaves to yaml.dump."""


# Bounded: a raw trace repeats few strings (field names, fd roles, requests), but one with many
# distinct strings must not grow memory; clearing costs only re-dumping the strings still used.
# Strings that are not fast are not kept: they are rare, and each one sends its value to yaml.dump.
_CACHE_LIMIT = 4096
_ITEM_TEXTS: dict[str, str] = {}  # str -> its text as an item of a flow collection
_KEY_TEXTS: dict[str, str] = {}  # str -> its text as a key of a flow mapping


def _flow(value: object, seen: set[int]) -> str:
    # Exact type checks: yaml.dump refuses subclasses it has no representer for (bool aside).
    if type(value) is int:
        return str(value)
    if type(value) is str:
        return _ITEM_TEXTS.get(value) or _learn_item(value)
    if type(value) is Hex:
        return hex(value)
    if type(value) is dict or type(value) is FlowMapping:
        _first_time(value, seen)
        keys = _KEY_TEXTS
        pairs = [
            f"{keys[key] if type(key) is str and key in keys else _learn_key(key)}: "
            f"{_flow(item, seen)}"
            for key, item in value.items()
        ]
        return "{" + ", ".join(pairs) + "}"
    if type(value) is list or type(value) is FlowSequence:
        _first_time(value, seen)
        return "[" + ", ".join([_flow(item, seen) for item in value]) + "]"
    raise _NotFast


def _first_time(container: object, seen: set[int]) -> None:
    """yaml.dump writes a container met a second time as an alias: not the fast path's job."""
    if id(container) in seen:
        raise _NotFast
    seen.add(id(container))


def _learn_item(text: str) -> str:
    return _remember(_ITEM_TEXTS, text, _dumped([text])[1:-1])


def _learn_key(key: object) -> str:
    if type(key) is not str:
        raise _NotFast
    # Written as {key: 0}; a key that cannot be a simple key (empty, long) as {? key : 0}, and
    # either way the same text stands before `: value` at any depth.
    return _remember(_KEY_TEXTS, key, _dumped({key: 0})[1:-4])


def _remember(cache: dict[str, str], text: str, written: str) -> str:
    """Keep how yaml.dump writes `text`, if on a single line: its line breaks would be followed
    by an indent that depends on the depth it is written at."""
    if len(written.splitlines()) != 1:
        raise _NotFast
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[text] = written
    return written
