"""Trace documents <-> YAML text: a deterministic dump and a strict, safe load.

The dump is a pure function of the document: keys in the order normalization put them (source
keys sorted), one flow-style line per call where it fits, addresses/sizes/masks as 0x... . The
loader reads with safe semantics only (a yaml.SafeLoader subclass composing nodes; values built
here from the node tree, no YAML tags, no aliases) and checks the structure, so whatever is wrong
with a file is reported as a SnapshotError naming the file, the line and what was expected.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol

import yaml

from conformance.model.document import SCHEMA, Hex, TraceCall, TraceDocument, Value
from conformance.model.errors import ConformanceError
from conformance.model.flow_yaml import Dumper, FlowMapping, FlowSequence

_MAX_DEPTH = 32  # far deeper than any KVM struct; bounds recursion on hostile input
# A call is one line up to this width; past it (or holding a table such as CPUID entries) it is
# laid out in block style with one line per record. Wide, because a KVM_RUN with the VMM's answer
# and the next exit reads best on one line.
_LINE_WIDTH = 200
_SCHEMA_PATTERN = re.compile(r"^kvm-conformance/(\d+)$")
_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"


class _Mark(Protocol):
    line: int  # 0-based


class SnapshotError(ConformanceError):
    """A snapshot file that cannot be read, written or understood."""

    def __init__(self, path: Path | str, line: int | None, message: str) -> None:
        self.path = Path(path)
        self.line = line
        self.message = message
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


# -- dumping --------------------------------------------------------------------------------


def _laid_out(value: Value, indent: int) -> Value:
    """Flow style for what fits on its line and holds no table; block style around the rest."""
    if not isinstance(value, dict | list):
        return value
    if indent + _flow_width(value) <= _LINE_WIDTH and not _holds_table(value):
        return FlowMapping(value) if isinstance(value, dict) else FlowSequence(value)
    if isinstance(value, dict):
        return {key: _laid_out(item, indent + 2) for key, item in value.items()}
    return [_laid_out(item, indent + 2) for item in value]


def _flow_width(value: Value) -> int:
    """About how wide `value` is as one line of flow YAML (quoting aside): a layout estimate."""
    if isinstance(value, dict):
        return 2 + sum(len(key) + 2 + _flow_width(item) + 2 for key, item in value.items())
    if isinstance(value, list):
        return 2 + sum(_flow_width(item) + 2 for item in value)
    return len(hex(value)) if isinstance(value, Hex) else len(str(value))


def _holds_table(value: Value) -> bool:
    """A list of several mappings (CPUID entries, MSRs, routes) is shown one record a line."""
    if isinstance(value, list):
        records = sum(isinstance(item, dict) for item in value)
        return records > 1 or any(_holds_table(item) for item in value)
    if isinstance(value, dict):
        return any(_holds_table(item) for item in value.values())
    return False


def _sorted_keys(value: Value) -> Value:
    if isinstance(value, dict):
        return {key: _sorted_keys(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted_keys(item) for item in value]
    return value


def dump_document(document: TraceDocument) -> str:
    body = {
        "schema": SCHEMA,
        "source": _sorted_keys(document.source),
        "threads": {
            role: [_laid_out(call.entry, indent=4) for call in document.threads[role]]
            for role in document.sorted_roles()
        },
    }
    return yaml.dump(
        body,
        Dumper=Dumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=_LINE_WIDTH,
    )


# -- loading --------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """Safe resolution of plain scalars; composes nodes only (values are built below)."""


def load_document(text: str, path: Path | str) -> TraceDocument:
    _check_events(text, path)
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as error:
        raise _from_yaml_error(error, path) from None
    except yaml.YAMLError as error:
        raise SnapshotError(path, None, str(error)) from None
    finally:
        loader.dispose()
    if root is None:
        raise SnapshotError(path, 1, "empty file: expected a trace document (schema, threads)")
    return _document(root, loader, path)


def _check_events(text: str, path: Path | str) -> None:
    """A first, flat pass: syntax errors, aliases and nesting depth, before anything recurses."""
    depth = 0
    try:
        for event in yaml.parse(text, Loader=_Loader):
            if isinstance(event, yaml.AliasEvent):
                raise _at(path, event.start_mark, "aliases (*name) are not allowed in a snapshot")
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > _MAX_DEPTH:
                    raise _at(path, event.start_mark, f"nested deeper than {_MAX_DEPTH} levels")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.MarkedYAMLError as error:
        raise _from_yaml_error(error, path) from None
    except yaml.reader.ReaderError as error:
        line = text.count("\n", 0, error.position) + 1
        raise SnapshotError(path, line, f"not a text file: {error.reason}") from None


def _from_yaml_error(error: yaml.MarkedYAMLError, path: Path | str) -> SnapshotError:
    mark = error.problem_mark or error.context_mark
    problem = error.problem or error.context or "malformed YAML"
    return SnapshotError(path, mark.line + 1 if mark else None, f"malformed YAML: {problem}")


def _at(path: Path | str, mark: _Mark | None, message: str) -> SnapshotError:
    return SnapshotError(path, mark.line + 1 if mark is not None else None, message)


def _document(root: yaml.Node, loader: _Loader, path: Path | str) -> TraceDocument:
    top = _mapping(root, path, "the trace document")
    for required in ("schema", "source", "threads"):
        if required not in top:
            raise _at(path, root.start_mark, f"missing top-level key '{required}'")
    for key, (key_node, _) in top.items():
        if key not in ("schema", "source", "threads"):
            raise _at(path, key_node.start_mark, f"unknown top-level key '{key}'")
    _check_schema(top["schema"][1], path)
    source = _value(top["source"][1], loader, path)
    if not isinstance(source, dict):
        raise _at(path, top["source"][1].start_mark, "'source' must be a mapping")
    threads: dict[str, list[TraceCall]] = {}
    for role, (_, calls_node) in _mapping(top["threads"][1], path, "'threads'").items():
        if not isinstance(calls_node, yaml.SequenceNode):
            raise _at(path, calls_node.start_mark, f"thread '{role}' must be a list of calls")
        threads[role] = [_call(node, loader, path) for node in calls_node.value]
    return TraceDocument(source=source, threads=threads, path=Path(path))


def _check_schema(node: yaml.Node, path: Path | str) -> None:
    found = node.value if isinstance(node, yaml.ScalarNode) else None
    if found == SCHEMA:
        return
    version = _SCHEMA_PATTERN.match(found) if isinstance(found, str) else None
    if version is not None and int(version.group(1)) > 1:
        message = f"written by a newer kvm-conformance ({found}); this version reads {SCHEMA}"
    else:
        message = f"expected 'schema: {SCHEMA}', found {found!r}"
    raise _at(path, node.start_mark, message)


def _mapping(
    node: yaml.Node, path: Path | str, what: str
) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    if not isinstance(node, yaml.MappingNode):
        raise _at(path, node.start_mark, f"{what} must be a mapping")
    pairs: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for key_node, value_node in node.value:
        if not (isinstance(key_node, yaml.ScalarNode) and key_node.tag == _STR):
            raise _at(path, key_node.start_mark, f"keys in {what} must be plain strings")
        if key_node.value in pairs:
            raise _at(path, key_node.start_mark, f"duplicate key '{key_node.value}' in {what}")
        pairs[key_node.value] = (key_node, value_node)
    return pairs


# Keys a call must have, by kind of call, and what type their values must be.
_REQUIRED_KEYS: dict[str, tuple[tuple[str, type], ...]] = {
    "ioctl": (("fd", str), ("req", object)),
    "mmap": (("len", int), ("ret", str)),
    "munmap": (("addr", str), ("len", int)),
}
_MAPPING_KEYS = ("in", "out", "exit")


def _call(node: yaml.Node, loader: _Loader, path: Path | str) -> TraceCall:
    line = node.start_mark.line + 1
    entry = _value(node, loader, path)
    if not isinstance(entry, dict):
        raise SnapshotError(path, line, "a call must be a mapping such as {call: ioctl, ...}")
    kind = entry.get("call")
    if not isinstance(kind, str):
        raise SnapshotError(path, line, "a call needs 'call: <syscall name>'")
    for key, expected in _REQUIRED_KEYS.get(kind, ()):
        if not isinstance(entry.get(key), expected):
            raise SnapshotError(path, line, f"a {kind} call needs '{key}' ({expected.__name__})")
    for key in _MAPPING_KEYS:
        if key in entry and not isinstance(entry[key], dict):
            raise SnapshotError(path, line, f"'{key}' must be a mapping of fields")
    repeat = entry.get("repeat", 1)
    if not isinstance(repeat, int) or repeat < 1:
        raise SnapshotError(path, line, "'repeat' must be a positive integer")
    return TraceCall(entry, line)


def _value(node: yaml.Node, loader: _Loader, path: Path | str) -> Value:
    if isinstance(node, yaml.MappingNode):
        pairs = _mapping(node, path, "a mapping")
        return {key: _value(value_node, loader, path) for key, (_, value_node) in pairs.items()}
    if isinstance(node, yaml.SequenceNode):
        return [_value(item, loader, path) for item in node.value]
    if isinstance(node, yaml.ScalarNode) and node.tag == _STR:
        return str(node.value)
    if isinstance(node, yaml.ScalarNode) and node.tag == _INT:
        return _integer(node, loader, path)
    raise _at(
        path,
        node.start_mark,
        f"unsupported value {_describe(node)}: expected an integer, a string, a list or a mapping",
    )


def _integer(node: yaml.ScalarNode, loader: _Loader, path: Path | str) -> int:
    try:
        number = loader.construct_yaml_int(node)
    except ValueError:
        raise _at(path, node.start_mark, f"malformed integer {node.value!r}") from None
    is_hex = node.value.lstrip("+-").lower().startswith("0x")
    return Hex(number) if is_hex else int(number)


def _describe(node: yaml.Node) -> str:
    shown = node.value if isinstance(node, yaml.ScalarNode) else type(node).__name__
    return f"{shown!r} ({node.tag})"
