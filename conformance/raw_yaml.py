"""The `yaml` output of the tracer: the trace format of DESIGN.md with raw, unnormalized values.

    schema: kvm-conformance/1
    source: {...}
    threads:
      '812':
        - {call: ioctl, fd: 5, fd_role: vcpu0, req: KVM_RUN, arg: 0x0, ret: 0, exit: {...}}

Threads are keyed by tid; fds are numbers (with their role beside them), addresses are host
addresses, flags are numbers: what the kernel saw, for debugging the tracer or the normalizer.
`in:` is what the kernel read at entry, `out:` what it wrote by exit; for KVM_RUN, `entry:` is
what the VMM answered the previous exit with and `exit:` the exit. Byte strings are lists of
bytes, ints that hold addresses or sizes are written in hex (the same rule as snapshots).

Streaming: each thread's lines go to a spool file as the events arrive, and close() writes the
document, one thread after another, so memory stays flat however long the trace.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from types import TracebackType
from typing import IO, TextIO

from conformance import events
from conformance.document import SCHEMA, Entry, Hex, Value
from conformance.snapshot import format_call, format_value

_HEX_FIELDS = frozenset({"addr", "length", "offset", "old_addr", "old_length", "new_length"})
_HEX_FIELDS |= {"new_addr", "prot", "flags", "arg"}


class RawYamlWriter:
    """An on_event callback writing the raw YAML stream to `output` when closed."""

    def __init__(self, output: TextIO, source: Entry) -> None:
        self._output = output
        self._source = source
        self._spools: dict[int, IO[str]] = {}
        self._open_spools = contextlib.ExitStack()

    def __call__(self, event: events.Event) -> None:
        spool = self._spools.get(event.tid)
        if spool is None:
            # Lives until close(); the ExitStack closes it (and every other spool) there.
            spool_file = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115
            spool = self._open_spools.enter_context(spool_file)
            self._spools[event.tid] = spool
        spool.write(f"    - {format_call(raw_entry(event))}\n")

    def close(self) -> None:
        self._output.write(f"schema: {SCHEMA}\nsource: {format_value(self._source)}\n")
        self._output.write("threads:\n" if self._spools else "threads: {}\n")
        for tid in sorted(self._spools):
            spool = self._spools[tid]
            self._output.write(f"  '{tid}':\n")
            spool.seek(0)
            shutil.copyfileobj(spool, self._output)
        self._spools.clear()
        self._open_spools.close()
        self._output.flush()

    def __enter__(self) -> RawYamlWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def raw_entry(event: events.Event) -> Entry:
    """One event as a trace entry with raw values."""
    entry: Entry = {"call": _call_name(event), "seq": event.seq}
    match event:
        case events.Ioctl():
            entry.update(fd=event.fd, fd_role=event.fd_role)
            entry["req"] = event.name or Hex(event.request)
            entry["arg"] = Hex(event.arg)
            for key, fields in (
                ("in", event.inputs),
                ("entry", event.run_entry),
                ("out", event.outputs),
                ("exit", event.run_exit),
            ):
                if fields is not None:
                    entry[key] = _value(fields, key)
        case events.TaskStarted() | events.TaskExited() | events.KvmRunSummary():
            entry.update(_plain_fields(event, exclude=("seq", "tid")))
            return entry
        case _:
            entry.update(_plain_fields(event, exclude=("seq", "tid", "pid", "ret", "errno")))
    if event.errno is not None:
        entry["errno"] = event.errno
    else:
        entry["ret"] = _value(event.ret, "ret")
    if isinstance(event, events.Ioctl) and event.new_fd_role is not None:
        entry["new_fd_role"] = event.new_fd_role
    return entry


def _call_name(event: events.Event) -> str:
    match event:
        case events.OpenKvm():
            return "open"
        case events.DupFd():
            return event.syscall
        case events.CloseFd():
            return "close"
        case events.EventFd():
            return "eventfd2"
        case events.TaskStarted():
            return "task_started"
        case events.TaskExited():
            return "task_exited"
        case events.KvmRunSummary():
            return "kvm_run_summary"
        case _:
            return type(event).__name__.lower()


def _plain_fields(event: events.Event, exclude: tuple[str, ...]) -> Entry:
    entry: Entry = {}
    for name in event.__dataclass_fields__:
        value = getattr(event, name)
        if name not in exclude and value is not None:
            entry[name] = _value(value, name)
    return entry


def _value(value: object, name: str) -> Value:
    if isinstance(value, dict):
        return {str(key): _value(item, str(key)) for key, item in value.items()}
    if isinstance(value, list):
        return [_value(item, name) for item in value]
    if isinstance(value, bytes):
        return [Hex(byte) for byte in value]
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return Hex(value) if name in _HEX_FIELDS or value > 0xFFFF else value
    return str(value)
