"""The `text` format: one strace-like line per event, every struct decoded, names not numbers.

    [pid 812] ioctl(5<vcpu0>, KVM_SET_REGS, {rax=0x0, ..., rip=0x1000, rflags=0x2}) = 0
    [pid 812] ioctl(5<vcpu0>, KVM_RUN, 0) = 0 -> KVM_EXIT_IO {direction=in, size=1, ...}

fds show their role (`5<vcpu0>`), ioctls their name, flags their symbolic names, exit reasons
theirs; MSR indices and CPUID leaves get a comment with their architectural name (xlat.py).
Ints are hex except counts, ids and small enums (the same rule as the normalized trace, from
conformance.model.symbolic). For reading, not parsing: the raw YAML stream is the machine format.
"""

from __future__ import annotations

import dataclasses
from typing import TextIO

from conformance.abi.ioctls import by_name
from conformance.model import events
from conformance.model import symbolic as names
from conformance.model.document import Value
from conformance.tracer import decode, xlat

_MSR_FIELD_PARENTS = frozenset({"msr", "entries"})


class TextWriter:
    """An on_event callback that writes each event as a line to `stream`.

    A VMM's KVM_RUN loop mostly repeats one exit (the same port, the same data): a line equal
    but for its event's identity is reused instead of formatted again, which took ~10 us of
    the ~40 us a traced exit costs.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._last_run: events.Ioctl | None = None
        self._last_run_line = ""

    def __call__(self, event: events.Event) -> None:
        if isinstance(event, events.Ioctl) and event.run_exit is not None:
            run = dataclasses.replace(event, seq=0, repeat=1)  # the call, wherever it came
            if run != self._last_run:
                self._last_run, self._last_run_line = run, format_event(event) + "\n"
            self._stream.write(self._last_run_line * event.repeat)  # a line per call, as strace
            return
        self._stream.write(format_event(event) + "\n")


def format_event(event: events.Event) -> str:
    return f"[pid {event.tid}] {_body(event)}"


def _body(event: events.Event) -> str:
    match event:
        case events.OpenKvm():
            return _open(event)
        case events.Ioctl():
            return _ioctl(event)
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
        return f"-1 {names.errno_name(call.errno)}"
    return _fd(call.ret, role) if role else str(call.ret)


def _flags(values: list[Value]) -> str:
    return "|".join(str(value) for value in values) or "0"


def _open(event: events.OpenKvm) -> str:
    flags = _flags(names.open_flags(event.flags))
    return (
        f'open("{event.path}", {flags}) = {_result(event, "kvm" if event.errno is None else None)}'
    )


def _ioctl(event: events.Ioctl) -> str:
    request = event.name or f"{event.request:#x} /* unknown */"
    if event.inputs is not None:
        argument = _struct(event.inputs, event.name or "")
    elif event.name is not None and not decode.decodes_pointer(by_name(event.name)):
        argument = str(names.ioctl_argument(event.name, event.arg))
    else:
        argument = hex(event.arg)
    line = f"ioctl({_fd(event.fd, event.fd_role)}, {request}, {argument}) = "
    line += _result(event, event.new_fd_role)
    if event.outputs is not None:
        line += f" => {_struct(event.outputs, event.name or '')}"
    if event.run_entry is not None:
        line += f" <= {_struct(event.run_entry, 'KVM_RUN')}"
    if event.run_exit is not None:
        line += f" -> {_run_exit(event.run_exit)}"
    return line


def _run_exit(run_exit: events.Fields) -> str:
    reason = run_exit.get("exit_reason")
    shown = str(names.EXIT_REASONS.name(reason)) if isinstance(reason, int) else "?"
    payload = {key: value for key, value in run_exit.items() if key != "exit_reason"}
    return f"{shown} {_struct(payload, 'KVM_RUN', in_exit=True)}" if payload else shown


def _struct(fields: events.Fields, request: str, *, in_exit: bool = False, parent: str = "") -> str:
    parts = [
        f"{name}={_value(value, name, request, in_exit, parent)}" for name, value in fields.items()
    ]
    return "{" + ", ".join(parts) + "}"


def _value(value: events.FieldValue, name: str, request: str, in_exit: bool, parent: str) -> str:
    if isinstance(value, dict):
        return _struct(value, request, in_exit=in_exit, parent=name)
    if isinstance(value, list):
        items = ", ".join(_value(item, name, request, in_exit, parent) for item in value)
        return f"[{items}]"
    if isinstance(value, bytes):
        return f'"{value.hex()}"' if value else '""'
    return _number(value, name, request, in_exit, parent)


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
