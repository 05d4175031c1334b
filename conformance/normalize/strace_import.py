"""An `strace -f` log of a VMM -> the same normalized trace document the tracer gives.

The article's workflow, made comparable: the calls strace logged become the tracer's events and
go through the same normalization (roles for fds, `ramN+0x..` for host addresses, roles for
threads). strace decodes the struct of only a few KVM ioctls (`STRACE_DECODED`); every other
ioctl whose argument is a pointer is marked `undecoded: pointer` in the document, so a reader
and a comparison know its `in:` is unknown, not empty. A struct strace abbreviated (`[...]`
without -v) is marked `undecoded: elided`. Neither says anything about KVM_RUN's exits, which
live in the kvm_run page strace never reads.
"""

from __future__ import annotations

import errno as errno_codes
import fcntl
import mmap
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from conformance.abi import _generated as kvm_abi
from conformance.abi.ioctls import IOCTLS, ArgKind, IoctlSpec, by_number
from conformance.model import events
from conformance.model.calls import request
from conformance.model.document import TraceDocument
from conformance.model.errors import ConformanceError
from conformance.model.fd_roles import FdTable, RoleNames, vm_of
from conformance.model.input_files import read_input_bytes
from conformance.normalize.normalizer import Normalizer
from conformance.normalize.strace_syntax import (
    ELIDED,
    StraceCall,
    StraceSyntaxError,
    StraceValue,
    parse_log,
)

# The KVM ioctls whose struct strace prints (strace's kvm.c); GET_* at exit, the rest at entry.
STRACE_DECODED = frozenset(
    {
        "KVM_SET_USER_MEMORY_REGION",
        "KVM_GET_REGS",
        "KVM_SET_REGS",
        "KVM_GET_SREGS",
        "KVM_SET_SREGS",
        "KVM_SET_CPUID2",
        "KVM_GET_SUPPORTED_CPUID",
        "KVM_GET_EMULATED_CPUID",
    }
)
_CLONE_THREAD = 0x00010000
_CLONE_FLAGS = re.compile(r"\bflags=(?P<flags>[\w|]+)")
# Names strace prints for flag and enum arguments when not run with -X verbose.
_SYMBOLS: dict[str, int] = {
    **{name: value for name, value in vars(os).items() if name.startswith(("O_", "EFD_"))},
    **{name: value for name, value in vars(fcntl).items() if name.startswith("F_DUPFD")},
    **{name: value for name, value in vars(mmap).items() if name.startswith(("PROT_", "MAP_"))},
    **{name: value for name, value in vars(mmap).items() if name.startswith("MADV_")},
    **{
        name: value
        for name, value in vars(kvm_abi).items()
        if name.startswith(("KVM_", "MAP_")) and isinstance(value, int)
    },
    "NULL": 0,
    "AT_FDCWD": -100,
    "PROT_NONE": 0,
}


class _Common(TypedDict):
    """The fields every call event has."""

    seq: int
    tid: int
    pid: int
    ret: int
    errno: int | None


class StraceImportError(ConformanceError):
    """An strace log that cannot be turned into a trace document."""


@dataclass(frozen=True)
class ImportedLog:
    document: TraceDocument
    skipped_lines: int


def import_strace_log(path: Path, *, lenient: bool = False) -> ImportedLog:
    # strace escapes what is not printable; a byte that is not UTF-8 is shown as U+FFFD.
    data = read_input_bytes(path, lambda line, message: StraceImportError(f"{path}: {message}"))
    text = data.decode("utf-8", errors="replace")
    del data
    parsed = parse_log(path, text, lenient=lenient)
    converter = _Converter({"tool": "strace", "log": path.name})
    skipped = parsed.skipped_lines
    for call in parsed.calls:
        try:
            converter.add(call)
        except ValueError as error:
            if not lenient:
                raise StraceSyntaxError(path, call.line, str(error)) from None
            skipped += 1
    if not converter.opened_kvm:
        raise StraceImportError(f"{path}: no KVM call in the log (was it `strace -f` of a VMM?)")
    return ImportedLog(converter.finish(), skipped)


@dataclass
class _Converter:
    source: dict[str, str]
    normalizer: Normalizer = field(init=False)
    names: RoleNames = field(default_factory=RoleNames)  # the tracer's namer: the same roles
    fds: dict[int, FdTable] = field(default_factory=dict)  # pid -> its fd table
    process_of: dict[int, int] = field(default_factory=dict)  # tid -> pid
    opened_kvm: bool = False
    seq: int = 0

    def __post_init__(self) -> None:
        self.normalizer = Normalizer(dict(self.source))

    def add(self, call: StraceCall) -> None:
        if call.ret is None:
            return  # the process ended inside the call: nothing was returned
        handler = _HANDLERS.get(call.name)
        if handler is not None:
            self.seq += 1
            handler(self, call)

    def common(self, call: StraceCall) -> _Common:
        tid = call.tid if call.tid is not None else 0
        # A thread strace never saw created (attached, or clone not traced) is the first
        # process's: a log of one VMM is one process unless it shows a fork.
        pid = self.process_of.setdefault(tid, next(iter(self.process_of.values()), tid))
        errno = _errno_number(call.errno) if call.errno else None
        return {"seq": self.seq, "tid": tid, "pid": pid, "ret": call.ret or 0, "errno": errno}

    def table(self, common: _Common) -> FdTable:
        return self.fds.setdefault(common["pid"], FdTable())

    def finish(self) -> TraceDocument:
        document = self.normalizer.finish()
        for located in document.calls():
            entry = located.entry
            spec = IOCTLS.get(request(entry))
            if spec is None or spec.arg_kind in (ArgKind.INTEGER, ArgKind.NONE):
                continue
            if spec.name not in STRACE_DECODED:
                entry["undecoded"] = "pointer"
            elif any(_elided(spec, entry.get(part)) for part in ("in", "out")):
                entry["undecoded"] = "elided"
        return document


def _open(converter: _Converter, call: StraceCall) -> None:
    path_index = 1 if call.name == "openat" else 0
    arguments = call.arguments(at_least=path_index + 2)
    path = _string(arguments[path_index])
    if not path.startswith("/dev/kvm"):
        return
    converter.opened_kvm = True
    common = converter.common(call)
    flags = _integer(arguments[path_index + 1])
    role = None
    if call.errno is None and call.ret is not None:
        kvm = converter.names.kvm()
        converter.table(common).add(call.ret, kvm, close_on_exec=bool(flags & os.O_CLOEXEC))
        role = kvm.role
    converter.normalizer.add(events.OpenKvm(**common, path=path, flags=flags, fd_role=role))


def _ioctl(converter: _Converter, call: StraceCall) -> None:
    fd = call.first_fd()
    common = converter.common(call)
    fds = converter.table(common)
    target = fds.get(fd) if fd is not None else None
    if fd is None or target is None:
        return  # a terminal, a socket...: not KVM, and its arguments are not ours to parse
    arguments = call.arguments(at_least=2)
    request = arguments[1]
    spec = IOCTLS.get(request) if isinstance(request, str) else by_number(_integer(request))
    if spec is None:
        raise ValueError(f"unknown ioctl request {request!r} on a KVM fd")
    argument = arguments[2] if len(arguments) > 2 else 0
    inputs = outputs = None
    raw_argument = 0
    if isinstance(argument, dict):
        fields = _fields(argument)
        if spec.name.startswith("KVM_GET"):
            outputs = fields
        else:
            inputs = fields
    else:
        raw_argument = _integer(argument)
    new_role = None
    # KVM_CREATE_DEVICE returns its fd inside a struct strace does not decode: not followed.
    if spec.creates not in (None, "device") and call.errno is None and call.ret is not None:
        created = converter.names.created(str(spec.creates), vm_of(target), raw_argument)
        fds.add(call.ret, created, close_on_exec=True)  # KVM makes every fd O_CLOEXEC
        new_role = created.role
    converter.normalizer.add(
        events.Ioctl(
            **common,
            fd=fd,
            fd_role=target.role,
            request=spec.number,
            name=spec.name,
            arg=raw_argument,
            inputs=inputs,
            outputs=outputs,
            new_fd_role=new_role,
        )
    )


def _mmap(converter: _Converter, call: StraceCall) -> None:
    address, length, prot, flags, fd, offset = call.arguments(at_least=6)[:6]
    fd_number = _integer(fd)
    common = converter.common(call)
    target = converter.table(common).get(fd_number)
    converter.normalizer.add(
        events.Mmap(
            **common,
            addr=_integer(address),
            length=_integer(length),
            prot=_integer(prot),
            flags=_integer(flags),
            fd=fd_number,
            fd_role=target.role if target is not None else None,
            offset=_integer(offset),
        )
    )


def _munmap(converter: _Converter, call: StraceCall) -> None:
    address, length = call.arguments(at_least=2)[:2]
    common = converter.common(call)
    munmap = events.Munmap(**common, addr=_integer(address), length=_integer(length))
    converter.normalizer.add(munmap)


def _mprotect(converter: _Converter, call: StraceCall) -> None:
    address, length, prot = call.arguments(at_least=3)[:3]
    common = converter.common(call)
    converter.normalizer.add(
        events.Mprotect(
            **common, addr=_integer(address), length=_integer(length), prot=_integer(prot)
        )
    )


def _madvise(converter: _Converter, call: StraceCall) -> None:
    address, length, advice = call.arguments(at_least=3)[:3]
    common = converter.common(call)
    converter.normalizer.add(
        events.Madvise(
            **common, addr=_integer(address), length=_integer(length), advice=_integer(advice)
        )
    )


def _close(converter: _Converter, call: StraceCall) -> None:
    fd = call.first_fd()
    if fd is None or call.errno == "EBADF":
        return
    common = converter.common(call)
    # Linux releases the fd even when close() reports an error (EINTR, EIO), as the tracer
    # records it.
    target = converter.table(common).close(fd)
    if target is not None:
        converter.normalizer.add(events.CloseFd(**common, fd=fd, fd_role=target.role))


def _dup(converter: _Converter, call: StraceCall) -> None:
    if call.errno is not None or call.ret is None:
        return
    arguments = call.arguments(at_least=1 if call.name == "dup" else 2)
    old_fd = _integer(arguments[0])
    if call.name == "fcntl":
        command = _integer(arguments[1])
        if command not in (fcntl.F_DUPFD, fcntl.F_DUPFD_CLOEXEC):
            return  # F_SETFD's close-on-exec flag only matters at an exec strace shows anyway
        new_fd, close_on_exec = call.ret, command == fcntl.F_DUPFD_CLOEXEC
    elif call.name == "dup":
        new_fd, close_on_exec = call.ret, False
    else:
        new_fd = _integer(arguments[1])
        close_on_exec = call.name == "dup3" and bool(
            _integer(arguments[2] if len(arguments) > 2 else 0) & os.O_CLOEXEC
        )
    common = converter.common(call)
    made = converter.table(common).duplicate(old_fd, new_fd, close_on_exec=close_on_exec)
    if made.closed is not None:
        closed: _Common = {**common, "ret": 0}
        converter.normalizer.add(events.CloseFd(**closed, fd=new_fd, fd_role=made.closed.role))
    if made.target is not None:
        converter.normalizer.add(
            events.DupFd(**common, syscall=call.name, old_fd=old_fd, fd_role=made.target.role)
        )


def _execve(converter: _Converter, call: StraceCall) -> None:
    if call.errno is None:
        converter.table(converter.common(call)).after_exec()


def _eventfd(converter: _Converter, call: StraceCall) -> None:
    arguments = call.arguments(at_least=1)
    flags = _integer(arguments[1]) if call.name == "eventfd2" and len(arguments) > 1 else 0
    common = converter.common(call)
    if call.errno is None and call.ret is not None:
        eventfd = converter.names.numbered("eventfd")
        converter.table(common).add(call.ret, eventfd, close_on_exec=bool(flags & os.O_CLOEXEC))
    converter.normalizer.add(events.EventFd(**common, initval=_integer(arguments[0]), flags=flags))


def _clone(converter: _Converter, call: StraceCall) -> None:
    if call.errno is not None or not call.ret:
        return  # failed, or the child's side of a fork
    # Only the flags matter, and clone3's `{...} => {parent_tid=[N]}` is not worth a grammar.
    flags = _CLONE_FLAGS.search(call.argument_text)
    if flags is None:
        raise ValueError(f"{call.name} without flags")
    text = flags["flags"]
    thread = "CLONE_THREAD" in text or (
        text.startswith("0x") and bool(int(text, 16) & _CLONE_THREAD)
    )
    common = converter.common(call)
    child_pid = common["pid"] if thread else call.ret
    converter.process_of[call.ret] = child_pid
    if not thread:  # a fork: the child starts with copies of its parent's fds
        converter.fds[child_pid] = converter.table(common).copy()
    converter.normalizer.add(
        events.TaskStarted(
            seq=converter.seq,
            tid=call.ret,
            pid=child_pid,
            parent_tid=common["tid"],
            kind="thread" if thread else "process",
        )
    )


_HANDLERS = {
    "open": _open,
    "openat": _open,
    "ioctl": _ioctl,
    "mmap": _mmap,
    "munmap": _munmap,
    "mprotect": _mprotect,
    "madvise": _madvise,
    "close": _close,
    "dup": _dup,
    "dup2": _dup,
    "dup3": _dup,
    "fcntl": _dup,
    "execve": _execve,
    "eventfd": _eventfd,
    "eventfd2": _eventfd,
    "clone": _clone,
    "clone3": _clone,
}


def _fields(value: dict[str, StraceValue]) -> events.Fields:
    fields: events.Fields = {}
    for name, item in value.items():
        if item in ([ELIDED], ELIDED):
            fields[name] = []  # a count without entries: marked `undecoded: elided` at finish
        elif isinstance(item, dict):
            fields[name] = _fields(item)
        elif isinstance(item, list):
            fields[name] = [_fields(i) if isinstance(i, dict) else _integer(i) for i in item]
        else:
            fields[name] = _integer(item)
    return fields


def _elided(spec: IoctlSpec, section: object) -> bool:
    """strace without -v prints a struct's entries as `[...]`: a count with no entries."""
    if not isinstance(section, dict) or spec.count_field is None or spec.entries_field is None:
        return False
    count = section.get(spec.count_field)
    return isinstance(count, int) and count > 0 and section.get(spec.entries_field) == []


def _integer(value: StraceValue) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        total = 0
        for part in value.split("|"):
            if part in _SYMBOLS:
                total |= _SYMBOLS[part]
            else:
                try:
                    total |= int(part, 0)
                except ValueError:
                    raise ValueError(f"a number or a known name, not {value!r}") from None
        return total
    raise ValueError(f"a number, not {value!r}")


def _string(value: StraceValue) -> str:
    if isinstance(value, str) and value.startswith('"'):
        return value.strip('"').removesuffix('"...')
    raise ValueError(f"a path string, not {value!r}")


def _errno_number(name: str) -> int:
    number = getattr(errno_codes, name, None)
    if not isinstance(number, int):
        raise ValueError(f"unknown errno {name}")
    return number
