"""A raw trace (`kvm-conformance trace --format yaml`, schema kvm-conformance-raw/1) back into
the tracer's events, normalized into a trace document as if it had just been traced.

The raw stream writes each event as tracer/raw_yaml.py's `raw_entry` makes it: threads keyed by
tid, every call with its `seq` (its place in the whole trace), fds as numbers beside their
roles, host addresses and flag bits as numbers. Read back in `seq` order, the events go through
the one Normalizer every source uses, so `diff` and `lint` judge a raw trace exactly as they
judge `record-trace vmm`'s document of the same run.

Two things the raw stream does not write are recovered: a call's process (pid) is its thread's
`task_started` pid (the tid itself for a thread seen without one, as the traced command's
first thread is when attaching), and byte data, written as a list of up to 16 0x.. bytes (or
as `hex:...`), is told from a list of numbers by being exactly that. A list of numbers in hex
that looks so normalizes the same either way: as a list of hex numbers. Errno names and a
`NULL` pointer argument are read back as the numbers they stand for.
"""

from __future__ import annotations

import errno as errno_codes
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, get_args, get_type_hints

import yaml

from conformance.abi.ioctls import IOCTLS
from conformance.model import events
from conformance.model.document import RAW_SCHEMA, TraceDocument
from conformance.model.errors import ConformanceError
from conformance.model.symbolic import HEX_BYTES
from conformance.normalize.normalizer import Normalizer

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when it is installed
_INT = "tag:yaml.org,2002:int"
_MAX_BYTE = 0xFF
_SHORT_BYTES = 16  # byte data up to this long is a list of bytes, longer `hex:...`
_NULL = "NULL"
_OR_NULL = {"arg": " or NULL"}


class RawTraceError(ConformanceError):
    """A raw trace that cannot be read back: names its file and line."""


class _HexInt(int):
    """An int written as 0x... in the file (each byte of byte data is written so)."""


_CALL_EVENTS: Mapping[str, type[events.Event]] = {
    "open": events.OpenKvm,
    "openat": events.OpenKvm,
    "openat2": events.OpenKvm,
    "ioctl": events.Ioctl,
    "mmap": events.Mmap,
    "munmap": events.Munmap,
    "mremap": events.Mremap,
    "mprotect": events.Mprotect,
    "madvise": events.Madvise,
    "dup": events.DupFd,
    "dup2": events.DupFd,
    "dup3": events.DupFd,
    "fcntl": events.DupFd,
    "close": events.CloseFd,
    "eventfd2": events.EventFd,
    "task_started": events.TaskStarted,
    "task_exited": events.TaskExited,
    "kvm_run_summary": events.KvmRunSummary,
}


def _optional_fields(kind: type[events.Event]) -> frozenset[str]:
    hints = get_type_hints(kind)
    return frozenset(name for name, hint in hints.items() if type(None) in get_args(hint))


# Per event class, the fields that may be None (which the raw stream does not write).
_OPTIONAL = {kind: _optional_fields(kind) for kind in set(_CALL_EVENTS.values())}
_SECTIONS = {"in": "inputs", "out": "outputs", "exit": "run_exit", "entry": "run_entry"}


@dataclass(frozen=True, slots=True)
class _RawCall:
    seq: int
    tid: int
    line: int
    entry: dict[str, object]


def is_raw_trace(text: str) -> bool:
    """Whether a YAML text is a raw trace: its first line names the raw schema."""
    return text.lstrip().startswith(f"schema: {RAW_SCHEMA}")


def import_raw_trace(text: str, path: Path) -> TraceDocument:
    """The normalized document of a raw trace; RawTraceError naming `path` and the line."""
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise _error(path, mark.line + 1 if mark else None, "malformed YAML") from None
    top = _pairs(root, path, "a raw trace (schema, source, threads)")
    schema = top.get("schema")
    if not isinstance(schema, yaml.ScalarNode) or schema.value != RAW_SCHEMA:
        raise _error(path, 1, f"expected 'schema: {RAW_SCHEMA}'")
    source = _value(top["source"], path) if "source" in top else None
    if not isinstance(source, dict) or "threads" not in top:
        raise _error(path, 1, "a raw trace needs `source:` and `threads:` mappings")
    calls = sorted(_calls(top["threads"], path), key=lambda call: call.seq)
    pids: dict[int, int] = {}
    for call in calls:
        pid = call.entry.get("pid")
        if call.entry.get("call") == "task_started" and isinstance(pid, int):
            pids.setdefault(call.tid, int(pid))
    normalizer = Normalizer({**source, "raw_trace": str(path)})
    for call in calls:
        normalizer.add(_event(call, pids.get(call.tid, call.tid), path))
    return normalizer.finish()


def _calls(threads: yaml.Node, path: Path) -> list[_RawCall]:
    found = []
    for tid_text, node in _pairs(threads, path, "`threads:` (tid: calls)").items():
        if not tid_text.isdigit() or not isinstance(node, yaml.SequenceNode):
            raise _error(path, node.start_mark.line + 1, f"thread {tid_text!r}: not a tid's calls")
        for call_node in node.value:
            line = call_node.start_mark.line + 1
            entry = _value(call_node, path)
            seq = entry.get("seq") if isinstance(entry, dict) else None
            if not isinstance(entry, dict) or not isinstance(seq, int):
                raise _error(path, line, "a call must be a mapping with its `seq` number")
            found.append(_RawCall(int(seq), int(tid_text), line, entry))
    return found


def _event(call: _RawCall, pid: int, path: Path) -> events.Event:
    entry = call.entry
    name = str(entry.get("call"))
    kind = _CALL_EVENTS.get(name)
    if kind is None:
        raise _error(path, call.line, f"unknown call {name!r}")
    values: dict[str, Any] = {"tid": call.tid, "pid": pid}
    for key, value in entry.items():
        if key in _SECTIONS:
            values[_SECTIONS[key]] = _fields(value, path, call.line)
        elif key != "call":
            values[key] = _plain(value)
    if kind is events.Ioctl:
        memory = values.pop("guest_memory", None)
        if memory is not None:
            values["guest_memory"] = _guest_memory(memory, path, call.line)
        request = values.pop("req", None)
        spec = IOCTLS.get(request) if isinstance(request, str) else None
        if isinstance(request, str) and spec is None:
            raise _error(path, call.line, f"unknown ioctl {request!r}")
        values["name"] = spec.name if spec is not None else None
        values["request"] = spec.number if spec is not None else request
        if values.get("arg") == _NULL:  # a null pointer, never readable (the stream says so once)
            values["arg"] = 0
            values.setdefault("readable", 0)
        for key in ("arg", "readable", "fd"):
            if key in values and not isinstance(values[key], int):
                raise _error(path, call.line, f"`{key}` must be an integer" + _OR_NULL.get(key, ""))
    elif kind in (events.OpenKvm, events.DupFd):
        values["syscall"] = name
    if issubclass(kind, events.Call):
        errno = values.setdefault("errno", None)
        if isinstance(errno, str):
            errno = values["errno"] = _errno_number(errno, path, call.line)
        elif errno is not None and not isinstance(errno, int):
            raise _error(path, call.line, "`errno` must be an errno name or number")
        values.setdefault("ret", -errno if isinstance(errno, int) else 0)
    for name_of_field in _OPTIONAL[kind]:  # the raw stream leaves out what is None
        values.setdefault(name_of_field, None)
    wanted = {field.name: field for field in fields(kind)}
    missing = [
        repr(field.name)
        for field in wanted.values()
        if field.name not in values
        and field.default is MISSING
        and field.default_factory is MISSING
    ]
    if missing:
        raise _error(path, call.line, f"a {name} call needs {', '.join(missing)}")
    return kind(**{key: value for key, value in values.items() if key in wanted})


def _errno_number(name: str, path: Path, line: int) -> int:
    number = getattr(errno_codes, name, None) if name.startswith("E") else None
    if not isinstance(number, int):
        raise _error(path, line, f"unknown errno {name!r}")
    return number


def _guest_memory(value: object, path: Path, line: int) -> events.GuestMemoryDigest:
    """`guest_memory: {vm: ROLE, pages: N, sha256: HEX}` as tracer/raw_yaml.py writes it."""
    if isinstance(value, dict):
        vm, pages, sha256 = value.get("vm"), value.get("pages"), value.get("sha256")
        if isinstance(vm, str) and isinstance(pages, int) and isinstance(sha256, str):
            return events.GuestMemoryDigest(vm_role=vm, pages=pages, sha256=sha256)
    raise _error(path, line, "`guest_memory` must be {vm: ROLE, pages: N, sha256: HEX}")


def _fields(value: object, path: Path, line: int) -> events.FieldValue:
    """Decoded struct fields as the tracer made them: ints, bytes, lists, nested mappings."""
    if isinstance(value, dict):
        return {str(key): _fields(item, path, line) for key, item in value.items()}
    if isinstance(value, list):
        short = len(value) <= _SHORT_BYTES
        if value and short and all(type(item) is _HexInt and item <= _MAX_BYTE for item in value):
            return bytes(int(item) for item in value)
        return [_fields(item, path, line) for item in value]
    if isinstance(value, int):
        return int(value)
    if isinstance(value, str) and value.startswith(HEX_BYTES):
        try:
            return bytes.fromhex(value.removeprefix(HEX_BYTES))
        except ValueError:
            raise _error(path, line, f"malformed byte string {value!r}") from None
    raise _error(path, line, f"not a decoded field value: {value!r}")


def _plain(value: object) -> object:
    """Values as the event dataclasses hold them (plain ints, no _HexInt)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return int(value) if isinstance(value, int) else value


def _pairs(node: yaml.Node | None, path: Path, what: str) -> dict[str, yaml.Node]:
    if not isinstance(node, yaml.MappingNode):
        line = node.start_mark.line + 1 if node is not None else 1
        raise _error(path, line, f"expected {what}")
    return {str(key.value): value for key, value in node.value}


def _value(node: yaml.Node, path: Path) -> object:
    if isinstance(node, yaml.MappingNode):
        return {str(key.value): _value(value, path) for key, value in node.value}
    if isinstance(node, yaml.SequenceNode):
        return [_value(item, path) for item in node.value]
    text = str(node.value)
    if node.tag != _INT:
        return text
    try:
        if text.lower().lstrip("+-").startswith("0x"):
            return _HexInt(int(text, 16))
        return int(text)
    except ValueError:
        raise _error(path, node.start_mark.line + 1, f"malformed integer {text!r}") from None


def _error(path: Path, line: int | None, message: str) -> RawTraceError:
    where = f"{path}:{line}" if line is not None else str(path)
    return RawTraceError(f"{where}: {message}")
