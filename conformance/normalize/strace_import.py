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
import mmap
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from conformance.abi import _generated as kvm_abi
from conformance.abi.ioctls import IOCTLS, ArgKind, IoctlSpec, by_number
from conformance.model import events
from conformance.model.document import TraceDocument
from conformance.model.errors import ConformanceError
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
    **{name: value for name, value in vars(os).items() if name.startswith("O_")},
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
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        raise StraceImportError(f"{path}: cannot read: {error.strerror}") from None
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
    roles: dict[int, str] = field(default_factory=dict)  # fd -> KVM role
    process_of: dict[int, int] = field(default_factory=dict)  # tid -> pid
    undecoded: dict[int, str] = field(default_factory=dict)  # seq of an ioctl -> why
    vms: int = 0
    counters: dict[str, int] = field(default_factory=dict)
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

    def finish(self) -> TraceDocument:
        document = self.normalizer.finish()
        for calls in document.threads.values():
            for traced in calls:
                entry = traced.entry
                spec = IOCTLS.get(str(entry.get("req", "")))
                if spec is None or spec.arg_kind in (ArgKind.INTEGER, ArgKind.NONE):
                    continue
                if spec.name not in STRACE_DECODED:
                    entry["undecoded"] = "pointer"
                elif any(_elided(spec, entry.get(part)) for part in ("in", "out")):
                    entry["undecoded"] = "elided"
        return document

    def new_role(self, kind: str) -> str:
        count = self.counters.get(kind, 0)
        self.counters[kind] = count + 1
        return f"{kind}{count}"


def _open(converter: _Converter, call: StraceCall) -> None:
    arguments = call.arguments()
    path_index = 1 if call.name == "openat" else 0
    path = _string(arguments[path_index])
    if not path.startswith("/dev/kvm"):
        return
    converter.opened_kvm = True
    common = converter.common(call)
    flags = _integer(arguments[path_index + 1])
    converter.normalizer.add(events.OpenKvm(**common, path=path, flags=flags))
    if call.errno is None and call.ret is not None:
        converter.roles[call.ret] = "kvm"


def _ioctl(converter: _Converter, call: StraceCall) -> None:
    fd = call.first_fd()
    role = converter.roles.get(fd) if fd is not None else None
    if fd is None or role is None:
        return  # a terminal, a socket...: not KVM, and its arguments are not ours to parse
    arguments = call.arguments()
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
    if spec.creates is not None and call.errno is None and call.ret is not None:
        new_role = _created_role(converter, spec.creates, raw_argument)
        converter.roles[call.ret] = new_role
    common = converter.common(call)
    converter.normalizer.add(
        events.Ioctl(
            **common,
            fd=fd,
            fd_role=role,
            request=spec.number,
            name=spec.name,
            arg=raw_argument,
            inputs=inputs,
            outputs=outputs,
            new_fd_role=new_role,
        )
    )


def _created_role(converter: _Converter, kind: str, argument: int) -> str:
    if kind == "vm":
        converter.vms += 1
        return "vm" if converter.vms == 1 else f"vm{converter.vms}"
    if kind == "vcpu":
        return f"vcpu{argument}"
    return converter.new_role(kind)


def _mmap(converter: _Converter, call: StraceCall) -> None:
    address, length, prot, flags, fd, offset = call.arguments()[:6]
    fd_number = _integer(fd)
    converter.normalizer.add(
        events.Mmap(
            **converter.common(call),
            addr=_integer(address),
            length=_integer(length),
            prot=_integer(prot),
            flags=_integer(flags),
            fd=fd_number,
            fd_role=converter.roles.get(fd_number),
            offset=_integer(offset),
        )
    )


def _munmap(converter: _Converter, call: StraceCall) -> None:
    address, length = call.arguments()[:2]
    common = converter.common(call)
    munmap = events.Munmap(**common, addr=_integer(address), length=_integer(length))
    converter.normalizer.add(munmap)


def _mprotect(converter: _Converter, call: StraceCall) -> None:
    address, length, prot = call.arguments()[:3]
    common = converter.common(call)
    converter.normalizer.add(
        events.Mprotect(
            **common, addr=_integer(address), length=_integer(length), prot=_integer(prot)
        )
    )


def _madvise(converter: _Converter, call: StraceCall) -> None:
    address, length, advice = call.arguments()[:3]
    common = converter.common(call)
    converter.normalizer.add(
        events.Madvise(
            **common, addr=_integer(address), length=_integer(length), advice=_integer(advice)
        )
    )


def _close(converter: _Converter, call: StraceCall) -> None:
    fd = call.first_fd()
    role = converter.roles.pop(fd, None) if fd is not None else None
    if fd is not None and role is not None and call.errno is None:
        converter.normalizer.add(events.CloseFd(**converter.common(call), fd=fd, fd_role=role))


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
