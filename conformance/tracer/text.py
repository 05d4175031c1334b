"""The `text` format: one strace-like line per event, every struct decoded, names not numbers.

    openat(AT_FDCWD, "/dev/kvm", O_RDWR|O_CLOEXEC) = 3<kvm>
    ioctl(5<vcpu0>, KVM_SET_REGS, {rax=0x0, ..., rip=0x1000, rflags=0x2}) = 0
    ioctl(5<vcpu0>, KVM_RUN, 0) = 0 -> KVM_EXIT_IO {direction=out, port=0x3f8, ..., data="H"}

fds show their role (`5<vcpu0>`), ioctls their name, flags their symbolic names, exit reasons
theirs; MSR indices and CPUID leaves get a comment with their architectural name (xlat.py).
Ints are hex except counts, ids and small enums (the same rule as the normalized trace, from
conformance.model.symbolic). Byte data (port and MMIO data, byte arrays) is a string as strace
writes one. As strace does, a line starts with `[pid TID]` once more than one process is
traced, and long values are abbreviated (`TextOptions`): strings to `string_limit` bytes and
arrays to as many items, and a table of structs (CPUID entries, MSRs) to its first entry
unless `verbose`. For reading, not parsing: the raw YAML stream is the machine format.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import TextIO

from conformance.abi.ioctls import Direction, by_name
from conformance.model import events, register_pages
from conformance.model import symbolic as names
from conformance.model.document import Value
from conformance.tracer import decode, xlat

_MSR_FIELD_PARENTS = frozenset({"msr", "entries"})
_KERNEL_WRITES = (Direction.READ, Direction.READ_WRITE)
DEFAULT_STRING_LIMIT = 32  # strace's default -s
_AT_FDCWD = -100
_STRING_ESCAPES = {ord("\t"): "\\t", ord("\n"): "\\n", ord("\v"): "\\v", ord("\f"): "\\f"}
_STRING_ESCAPES |= {ord("\r"): "\\r", ord('"'): '\\"', ord("\\"): "\\\\"}


@dataclass(frozen=True, slots=True)
class TextOptions:
    """How much of each value a line shows (`trace -s N`, `trace -v`)."""

    string_limit: int = DEFAULT_STRING_LIMIT  # bytes of a string, items of an array
    verbose: bool = False  # every entry of a table of structs, not only the first


class TextWriter:
    """An on_event callback that writes each event as a line to `stream`.

    A VMM's KVM_RUN loop mostly repeats one exit (the same port, the same data): a line equal
    but for its event's identity is reused instead of formatted again, which took ~10 us of
    the ~40 us a traced exit costs.
    """

    def __init__(self, stream: TextIO, options: TextOptions | None = None) -> None:
        self._stream = stream
        self._options = options or TextOptions()
        self._processes: set[int] = set()
        self._last_run: events.Ioctl | None = None
        self._last_run_body = ""

    def __call__(self, event: events.Event) -> None:
        self._processes.add(event.pid)
        prefix = f"[pid {event.tid}] " if len(self._processes) > 1 else ""
        if isinstance(event, events.Ioctl) and event.run_exit is not None:
            run = dataclasses.replace(event, seq=0, repeat=1)  # the call, wherever it came
            if run != self._last_run:
                self._last_run = run
                self._last_run_body = format_event(event, self._options)
            line = f"{prefix}{self._last_run_body}\n"
            self._stream.write(line * event.repeat)  # a line per call, as strace
            return
        self._stream.write(f"{prefix}{format_event(event, self._options)}\n")


def format_event(event: events.Event, options: TextOptions | None = None) -> str:
    """One event as its line, without the `[pid N]` a writer puts before it."""
    return _body(event, options or TextOptions())


def _body(event: events.Event, options: TextOptions) -> str:
    match event:
        case events.OpenKvm():
            return _open(event)
        case events.Ioctl():
            return _ioctl(event, options)
        case events.Mmap():
            return _mmap(event)
        case events.Munmap():
            return _munmap(event)
        case events.Mremap():
            return _mremap(event)
        case events.Mprotect():
            return _mprotect(event)
        case events.Madvise():
            return _madvise(event)
        case events.DupFd():
            return _dup(event)
        case events.CloseFd():
            return _close(event)
        case events.EventFd():
            return _eventfd(event)
        case events.TaskStarted():
            return _task_started(event)
        case events.TaskExited():
            return _task_exited(event)
        case events.KvmRunSummary():
            return _summary(event)


def _fd(fd: int, role: str | None) -> str:
    return f"{fd}<{role}>" if role else str(fd)


def _result(call: events.Call, role: str | None = None) -> str:
    if call.errno is not None:
        return f"-1 {names.errno_name(call.errno)} ({os.strerror(call.errno)})"
    return _fd(call.ret, role) if role else str(call.ret)


def _flags(values: list[Value]) -> str:
    return "|".join(str(value) for value in values) or "0"


def _open(event: events.OpenKvm) -> str:
    flags = _flags(names.open_flags(event.flags))
    path = _string(event.path.encode(errors="surrogateescape"), limit=None)
    arguments = f"{path}, {flags}"
    if event.syscall == "openat2":
        arguments = f"{path}, {{flags={flags}}}"
    if event.syscall != "open":
        directory = "AT_FDCWD" if event.dirfd in (None, _AT_FDCWD) else str(event.dirfd)
        arguments = f"{directory}, {arguments}"
    result = _result(event, event.fd_role if event.errno is None else None)
    return f"{event.syscall}({arguments}) = {result}"


def _ioctl(event: events.Ioctl, options: TextOptions) -> str:
    request = event.name or f"{event.request:#x} /* unknown */"
    spec = by_name(event.name) if event.name is not None else None
    struct_name = spec.arg_type if spec is not None else None
    # As strace: a pointer it could not read, or that the kernel was to write when the call
    # failed (an E2BIG probe), is shown as the pointer.
    as_pointer = event.readable is not None or (
        event.errno is not None and spec is not None and spec.direction in _KERNEL_WRITES
    )
    if as_pointer:
        argument = hex(event.arg) if event.arg or spec is None else "NULL"
    elif event.inputs is not None:
        inputs = register_pages.decode_pages(struct_name, event.inputs)
        argument = _struct(inputs, event.name or "", options)
    elif spec is not None and not decode.decodes_pointer(spec):
        argument = str(names.ioctl_argument(spec.name, event.arg))
    else:
        argument = hex(event.arg) if event.arg or spec is None else "NULL"
    line = f"ioctl({_fd(event.fd, event.fd_role)}, {request}, {argument}) = "
    line += _result(event, event.new_fd_role)
    if event.outputs is not None and not as_pointer:
        outputs = register_pages.decode_pages(struct_name, event.outputs)
        line += f" => {_struct(outputs, event.name or '', options)}"
    if event.run_entry is not None:
        line += f" <= {_struct(event.run_entry, 'KVM_RUN', options)}"
    if event.run_exit is not None:
        line += f" -> {_run_exit(event.run_exit, options)}"
    return line


def _run_exit(run_exit: events.Fields, options: TextOptions) -> str:
    reason = run_exit.get("exit_reason")
    shown = str(names.EXIT_REASONS.name(reason)) if isinstance(reason, int) else "?"
    payload = {key: value for key, value in run_exit.items() if key != "exit_reason"}
    if not payload:
        return shown
    return f"{shown} {_struct(payload, 'KVM_RUN', options, in_exit=True)}"


def _struct(
    fields: events.Fields,
    request: str,
    options: TextOptions,
    *,
    in_exit: bool = False,
    parent: str = "",
) -> str:
    parts = [
        f"{name}={_value(value, name, request, options, in_exit=in_exit, parent=parent)}"
        for name, value in fields.items()
    ]
    return "{" + ", ".join(parts) + "}"


def _value(
    value: events.FieldValue,
    name: str,
    request: str,
    options: TextOptions,
    *,
    in_exit: bool,
    parent: str,
) -> str:
    if isinstance(value, dict):
        return _struct(value, request, options, in_exit=in_exit, parent=name)
    if isinstance(value, list):
        return _array(value, name, request, options, in_exit=in_exit, parent=parent)
    if isinstance(value, bytes):
        return _string(value, options.string_limit)
    return _number(value, name, request, in_exit, parent)


def _array(
    items: list[events.FieldValue],
    name: str,
    request: str,
    options: TextOptions,
    *,
    in_exit: bool,
    parent: str,
) -> str:
    """`[a, b, ...]`: `string_limit` items at most, and of a table of structs (CPUID entries,
    MSRs) only the first unless verbose, as strace abbreviates arrays."""
    table = len(items) > 1 and all(isinstance(item, dict) for item in items)
    shown = 1 if table and not options.verbose else options.string_limit
    written = [
        _value(item, name, request, options, in_exit=in_exit, parent=parent)
        for item in items[:shown]
    ]
    if len(items) > shown:
        written.append(f"... /* {len(items)} entries */" if table else "...")
    return f"[{', '.join(written)}]"


def _string(data: bytes, limit: int | None) -> str:
    """Bytes as strace writes a string: printable ASCII as it is, C escapes for tab, newline
    and the like, octal for the rest; `limit` bytes at most, then `...`."""
    shown = data if limit is None else data[:limit]
    text = []
    for position, byte in enumerate(shown):
        if byte in _STRING_ESCAPES:
            text.append(_STRING_ESCAPES[byte])
        elif 0x20 <= byte < 0x7F:
            text.append(chr(byte))
        else:
            following = shown[position + 1 : position + 2]
            digits = 3 if following and 0x30 <= following[0] <= 0x37 else 1
            text.append(f"\\{byte:0{digits}o}")
    more = "..." if limit is not None and len(data) > limit else ""
    return f'"{"".join(text)}"{more}'


def _number(value: int, name: str, request: str, in_exit: bool, parent: str) -> str:
    enum = names.EXIT_PAYLOAD_ENUMS.get((parent, name)) if in_exit else None
    if enum is not None:
        return str(enum.name(value))
    flag_table = names.STRUCT_FLAG_FIELDS.get(request, {}).get(name)
    if flag_table is not None:
        return _flags(flag_table.names(value))
    if name in names.STRUCT_ENUM_FIELDS:
        return str(names.STRUCT_ENUM_FIELDS[name].name(value))
    shown = str(names.number(value, name, in_exit=in_exit))
    comment = _comment(value, name, request, parent)
    return f"{shown} /* {comment} */" if comment else shown


def _comment(value: int, name: str, request: str, parent: str) -> str | None:
    if name == "index" and parent in _MSR_FIELD_PARENTS and "MSR" in (request + parent).upper():
        return xlat.msr_name(value)
    if name == "indices":
        return xlat.msr_name(value)
    if name == "function" and "CPUID" in request:
        return xlat.cpuid_leaf_name(value)
    return None


def _mmap(event: events.Mmap) -> str:
    prot = _flags(names.MMAP_PROT.names(event.prot))
    flags = _flags(names.MMAP_FLAGS.names(event.flags))
    address = hex(event.addr) if event.addr else "NULL"
    result = hex(event.ret) if event.errno is None else _result(event)
    return (
        f"mmap({address}, {event.length:#x}, {prot}, {flags}, {_fd(event.fd, event.fd_role)}, "
        f"{event.offset:#x}) = {result}"
    )


def _munmap(event: events.Munmap) -> str:
    return f"munmap({event.addr:#x}, {event.length:#x}) = {_result(event)}"


def _mremap(event: events.Mremap) -> str:
    flags = _flags(names.MREMAP_FLAGS.names(event.flags))
    result = hex(event.ret) if event.errno is None else _result(event)
    return (
        f"mremap({event.old_addr:#x}, {event.old_length:#x}, {event.new_length:#x}, {flags}, "
        f"{event.new_addr:#x}) = {result}"
    )


def _mprotect(event: events.Mprotect) -> str:
    prot = _flags(names.MMAP_PROT.names(event.prot))
    return f"mprotect({event.addr:#x}, {event.length:#x}, {prot}) = {_result(event)}"


def _madvise(event: events.Madvise) -> str:
    advice = names.MADVICE.name(event.advice)
    return f"madvise({event.addr:#x}, {event.length:#x}, {advice}) = {_result(event)}"


def _dup(event: events.DupFd) -> str:
    return f"{event.syscall}({_fd(event.old_fd, event.fd_role)}) = {_result(event, event.fd_role)}"


def _close(event: events.CloseFd) -> str:
    return f"close({_fd(event.fd, event.fd_role)}) = {_result(event)}"


def _eventfd(event: events.EventFd) -> str:
    flags = _flags(names.EVENTFD_FLAGS.names(event.flags))
    return f"eventfd2({event.initval}, {flags}) = {_result(event)}"


def _task_started(event: events.TaskStarted) -> str:
    return f"+++ {event.kind} {event.tid} started by {event.parent_tid or 'the tracer'} +++"


def _task_exited(event: events.TaskExited) -> str:
    if event.status < 0:
        return f"+++ killed by signal {-event.status} +++"
    return f"+++ exited with {event.status} +++"


def _summary(event: events.KvmRunSummary) -> str:
    counters = ", ".join(f"{name}={count}" for name, count in sorted(event.counters.items()))
    return f"KVM_RUN summary {event.vcpu_role}: {counters}"
