"""Trace documents <-> YAML text: a deterministic dump and a strict, safe load.

The dump is a pure function of the document: keys in the order normalization put them (source
keys sorted), one flow-style line per call where it fits, addresses/sizes/masks as 0x... .

The load reads exactly the trace format (snapshot/schema.py says what each key holds): YAML with
no tags, anchors or aliases; ints in decimal or 0x hex within 64 bits (not YAML 1.1's octal,
sexagesimal, `+5` or `1_000`); names where names belong. Whatever is wrong with a file is a
SnapshotError naming the file, the line and what was expected. One-line calls, nearly all of a
trace, are read by snapshot/flow_lines.py; libyaml composes the rest (snapshot/skeleton.py), and
values are built here from its nodes, never by YAML's constructors.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Protocol

import yaml

from conformance.model.document import SCHEMA, SCHEMA_1, Entry, Hex, TraceCall, TraceDocument, Value
from conformance.model.errors import ConformanceError
from conformance.model.flow_yaml import Dumper, FlowMapping, FlowSequence
from conformance.model.host_profile import HOST
from conformance.model.portable import make_portable
from conformance.model.printable import shown
from conformance.snapshot import schema
from conformance.snapshot.skeleton import PLACEHOLDER, Run, Split, split

# A call is one line up to this width; past it (or holding a table such as CPUID entries) it is
# laid out in block style with one line per record. Wide, because a KVM_RUN with the VMM's answer
# and the next exit reads best on one line.
_LINE_WIDTH = 200
_SCHEMA_PATTERN = re.compile(r"^kvm-conformance/(\d+)$")
_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_STRICT_INT = re.compile(r"-?(?:0|[1-9][0-9]*|0x[0-9a-fA-F]+)")
# The characters YAML allows in a stream (YAML 1.1, as PyYAML's reader checks them).
_OTHER_LINE_BREAKS = re.compile("[\r\x85\u2028\u2029]")
_NOT_YAML_TEXT = re.compile(
    "[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
)
# A document not laid out as the dumper writes is composed by libyaml whole: ~3 µs per scalar
# and a few hundred bytes of nodes each. Past this size that is minutes and gigabytes.
_WHOLE_COMPOSE_LIMIT = 16 * 1024 * 1024


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


def _laid_out_source(source: Entry) -> Value:
    """Keys sorted; the host profile's tables (supported CPUID, MSR lists) one record a line,
    each record's fields in the order of the call they were read from."""
    profile = source.get(HOST)
    if not isinstance(profile, dict):
        return _sorted_keys(source)
    laid_out = _laid_out({key: profile[key] for key in sorted(profile)}, indent=2)
    return {key: laid_out if key == HOST else _sorted_keys(source[key]) for key in sorted(source)}


def dump_document(document: TraceDocument) -> str:
    body = {
        "schema": SCHEMA,
        "source": _laid_out_source(document.source),
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


class _Loader(yaml.CSafeLoader):
    """libyaml's parser with safe resolution of plain scalars; composes nodes only (values are
    built below, so no constructor ever runs)."""


class _LayoutMismatch(Exception):
    """The skeleton's placeholders are not where the split put them: read the text whole."""


def load_document(text: str, path: Path | str) -> TraceDocument:
    bad = _NOT_YAML_TEXT.search(text)
    if bad is not None:
        line = text.count("\n", 0, bad.start()) + 1
        raise SnapshotError(path, line, f"character {ord(bad[0]):#06x} is not allowed in YAML text")
    # libyaml breaks lines at \r, \r\n, U+0085, U+2028 and U+2029 too. \r\n is one break
    # either way; with any other, the split's line numbers would not be libyaml's: no fast path.
    if "\r\n" in text:
        text = text.replace("\r\n", "\n")
    parts = split(text) if not _OTHER_LINE_BREAKS.search(text) else Split(text, {})
    try:
        root = _compose(parts.skeleton, path)
    except SnapshotError:
        _check_events(text, path)  # the original's own error, if it has one
        root = None
    try:
        if root is None:
            raise _LayoutMismatch
        return _Document(path, parts.runs).build(root)
    except _LayoutMismatch:
        if len(text) > _WHOLE_COMPOSE_LIMIT:
            raise SnapshotError(
                path,
                None,
                f"{len(text)} characters not laid out as kvm-conformance writes traces; "
                f"documents in another layout are read up to {_WHOLE_COMPOSE_LIMIT} characters",
            ) from None
        whole = _compose(text, path)
        if whole is None:
            raise SnapshotError(path, 1, "empty file: expected a trace document") from None
        return _Document(path, {}).build(whole)


def _compose(text: str, path: Path | str) -> yaml.Node | None:
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
    return root


def _check_events(text: str, path: Path | str) -> None:
    """A first, flat pass: syntax errors, tags, anchors and nesting depth, before anything
    recurses over the nodes."""
    depth = 0
    try:
        for event in yaml.parse(text, Loader=_Loader):
            if isinstance(event, yaml.AliasEvent):
                raise _at(path, event.start_mark, "aliases (*name) are not allowed in a trace")
            if isinstance(event, yaml.NodeEvent) and event.anchor is not None:
                raise _at(path, event.start_mark, "anchors (&name) are not allowed in a trace")
            if isinstance(event, yaml.ScalarEvent | yaml.CollectionStartEvent) and (
                event.tag is not None
            ):
                raise _at(path, event.start_mark, f"YAML tags ({event.tag}) are not allowed")
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > schema.MAX_DEPTH:
                    raise _at(path, event.start_mark, f"nested deeper than {schema.MAX_DEPTH}")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.MarkedYAMLError as error:
        raise _from_yaml_error(error, path) from None
    except yaml.YAMLError as error:
        raise SnapshotError(path, None, f"malformed YAML: {error}") from None


def _from_yaml_error(error: yaml.MarkedYAMLError, path: Path | str) -> SnapshotError:
    mark = error.problem_mark or error.context_mark
    problem = error.problem or error.context or "malformed YAML"
    return SnapshotError(path, mark.line + 1 if mark else None, f"malformed YAML: {problem}")


def _at(path: Path | str, mark: _Mark | None, message: str) -> SnapshotError:
    return SnapshotError(path, mark.line + 1 if mark is not None else None, message)


class _Document:
    """Builds a TraceDocument from the composed skeleton and the fast reader's runs."""

    def __init__(self, path: Path | str, runs: dict[int, Run]) -> None:
        self.path = path
        self.runs = runs
        self.used: set[int] = set()

    def build(self, root: yaml.Node) -> TraceDocument:
        top = self._mapping(root, "the trace document")
        for key, entry in schema.TOP_LEVEL.items():
            if entry.required and key not in top:
                raise _at(self.path, root.start_mark, f"missing top-level key '{key}'")
        for key, (key_node, _) in top.items():
            if key not in schema.TOP_LEVEL:
                raise _at(self.path, key_node.start_mark, f"unknown top-level key {key!r}")
        written_in_schema_1 = _check_schema(top["schema"][1], self.path)
        source = self.value(top["source"][1])
        if not isinstance(source, dict):
            raise _at(self.path, top["source"][1].start_mark, "'source' must be a mapping")
        threads: dict[str, list[TraceCall]] = {}
        for role, (key_node, calls_node) in self._mapping(top["threads"][1], "'threads'").items():
            problem = schema.check_role(role)
            if problem is not None:
                raise _at(self.path, key_node.start_mark, problem)
            if not isinstance(calls_node, yaml.SequenceNode):
                raise _at(self.path, calls_node.start_mark, f"thread {role!r}: expected a list")
            threads[role] = self._calls(role, calls_node)
        if self.used != set(self.runs):
            raise _LayoutMismatch
        document = TraceDocument(source=source, threads=threads, path=Path(self.path))
        return make_portable(document) if written_in_schema_1 else document

    def _calls(self, role: str, calls_node: yaml.SequenceNode) -> list[TraceCall]:
        calls: list[TraceCall] = []
        for node in calls_node.value:
            run = self._run(node, calls_node)
            if run is None:
                entry = self.value(node)
                line = node.start_mark.line + 1
                if not isinstance(entry, dict):
                    raise SnapshotError(
                        self.path,
                        line,
                        f"{role}[{len(calls)}]: a call must be "
                        "a mapping such as {call: ioctl, ...}",
                    )
                self._check(entry, f"{role}[{len(calls)}]", line, node)
                calls.append(TraceCall(entry, line))
                continue
            for fast in run.calls:
                if fast.first_of_its_text:
                    self._check(fast.entry, f"{role}[{len(calls)}]", fast.line, None)
                calls.append(TraceCall(fast.entry, fast.line))
        return calls

    def _run(self, node: yaml.Node, parent: yaml.SequenceNode) -> Run | None:
        """The run a placeholder item stands for, when it is one and where the split put it."""
        if not (isinstance(node, yaml.ScalarNode) and node.tag == _STR and not node.style):
            return None
        placeholder = PLACEHOLDER.fullmatch(node.value)
        run = self.runs.get(int(placeholder[1])) if placeholder else None
        if run is None or run.first_line in self.used or parent.flow_style:
            return None
        if (node.start_mark.line + 1, node.start_mark.column) != (run.first_line, run.indent + 2):
            return None
        self.used.add(run.first_line)
        return run

    def _check(self, entry: Entry, where: str, line: int, node: yaml.Node | None) -> None:
        """`node`: the call's node, to find a nested field's own line; None for a call on one
        line."""
        problem = schema.check_call(entry)
        if problem is not None:
            if node is not None:
                line = _line_of(node, problem.path)
            path_shown = shown(problem.path)
            raise SnapshotError(self.path, line, f"{where} {path_shown}: {problem.message}")

    def _mapping(self, node: yaml.Node, what: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise _at(self.path, node.start_mark, f"{what} must be a mapping")
        pairs: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            if not (isinstance(key_node, yaml.ScalarNode) and key_node.tag == _STR):
                raise _at(
                    self.path,
                    key_node.start_mark,
                    f"keys in {what} must be strings, found {_describe(key_node)}",
                )
            if key_node.value in pairs:
                raise _at(
                    self.path, key_node.start_mark, f"duplicate key {key_node.value!r} in {what}"
                )
            pairs[key_node.value] = (key_node, value_node)
        return pairs

    def value(self, node: yaml.Node) -> Value:
        if isinstance(node, yaml.MappingNode):
            pairs = self._mapping(node, "a mapping")
            return {key: self.value(value_node) for key, (_, value_node) in pairs.items()}
        if isinstance(node, yaml.SequenceNode):
            return [self.value(item) for item in node.value]
        if isinstance(node, yaml.ScalarNode) and node.tag == _STR:
            return str(node.value)
        if isinstance(node, yaml.ScalarNode) and node.tag == _INT:
            return _integer(node, self.path)
        raise _at(
            self.path,
            node.start_mark,
            f"unsupported value {_describe(node)}: expected an integer, a string, a list or a "
            "mapping",
        )


def _check_schema(node: yaml.Node, path: Path | str) -> bool:
    """Whether the document is in schema 1 (read, then upgraded); anything but 1 or 2 is
    refused."""
    found = node.value if isinstance(node, yaml.ScalarNode) else None
    if found in (SCHEMA, SCHEMA_1):
        return bool(found == SCHEMA_1)
    version = _SCHEMA_PATTERN.match(found) if isinstance(found, str) else None
    if version is not None and int(version.group(1)) > 2:
        message = f"written by a newer kvm-conformance ({found}); this version reads {SCHEMA}"
    else:
        shown = found if found is None else schema.shown(found)
        message = f"expected 'schema: {SCHEMA}', found {shown}"
    raise _at(path, node.start_mark, message)


def _integer(node: yaml.ScalarNode, path: Path | str) -> int:
    text = node.value
    if len(text) > 21 or not _STRICT_INT.fullmatch(text):
        raise _at(
            path,
            node.start_mark,
            f"malformed integer {schema.shown(text)}: write integers in decimal or 0x hex "
            "(no sign +, _, leading 0, octal or sexagesimal)",
        )
    number = int(text, 0) if "x" in text else int(text)
    if not schema.INT_MIN <= number <= schema.INT_MAX:
        raise _at(path, node.start_mark, f"integer {text} does not fit in 64 bits")
    return Hex(number) if "x" in text else number


def _line_of(node: yaml.Node, where: str) -> int:
    """The line of the value at field path `where` (`in.entries[3].eax`) below a call's node;
    the nearest enclosing one when the path leads nowhere."""
    for step in re.findall(r"[^.\[\]]+|\[\d+\]", where):
        if isinstance(node, yaml.MappingNode):
            found = [value for key, value in node.value if key.value == step]
            if not found:
                break
            node = found[0]
        elif isinstance(node, yaml.SequenceNode) and step.startswith("["):
            index = int(step[1:-1])
            if index >= len(node.value):
                break
            node = node.value[index]
        else:
            break
    return node.start_mark.line + 1


def _describe(node: yaml.Node) -> str:
    shown = node.value if isinstance(node, yaml.ScalarNode) else type(node).__name__
    return f"{schema.shown(shown)} ({node.tag})"
