"""The `yaml` output of the tracer: the trace format (docs/trace-format.md) with raw values.

    schema: kvm-conformance-raw/1
    source: {...}
    threads:
      '812':
        - {call: ioctl, fd: 5, fd_role: vcpu0, req: KVM_RUN, arg: 0x0, ret: 0, exit: {...}}

Threads are keyed by tid; fds are numbers (with their role beside them), addresses are host
addresses, flags are numbers: what the kernel saw, for debugging the tracer or the normalizer.
`in:` is what the kernel read at entry, `out:` what it wrote by exit; for KVM_RUN, `entry:` is
kvm_run's control bytes and what the VMM answered the previous exit with, `exit:` the exit.
Numbers follow the normalized document's rule (model/symbolic.py): counts, ids and small enums
in decimal, addresses, sizes, masks and registers in hex; byte strings as there (a list of
bytes up to 16, `hex:...` beyond). An errno is its name. A pointer argument is `NULL` or its
address in hex; one the tracer could not read whole has `readable:`, the bytes it could.

Streaming: each thread's lines go to a spool file as the events arrive, and close() writes the
document, one thread after another, so memory stays flat however long the trace.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
from types import TracebackType
from typing import IO, TextIO, get_args

from conformance.abi.ioctls import IOCTLS
from conformance.model import events, symbolic
from conformance.model.document import RAW_SCHEMA, Entry, Hex, Value
from conformance.model.flow_yaml import format_call, format_value
from conformance.tracer import decode

# The calls' own arguments that are addresses, sizes or masks (the rest: fds, counts, enums).
_HEX_FIELDS = frozenset({"addr", "length", "offset", "old_addr", "old_length", "new_length"})
_HEX_FIELDS |= {"new_addr", "prot", "flags"}
_ADDRESS_RESULTS = (events.Mmap, events.Mremap)  # calls whose `ret` is an address


class RawYamlWriter:
    """An on_event callback writing the raw YAML stream to `output` when closed."""

    def __init__(self, output: TextIO, source: Entry) -> None:
        self._output = output
        self._source = source
        self._spools: dict[int, IO[str]] = {}
        self._open_spools = contextlib.ExitStack()
        # tid -> its last KVM_RUN as text but for `seq`, and its line's text after `seq`
        self._last_runs: dict[int, tuple[str, str]] = {}

    def __call__(self, event: events.Event) -> None:
        spool = self._spools.get(event.tid)
        if spool is None:
            # Lives until close(); the ExitStack closes it (and every other spool) there.
            spool_file = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115
            spool = self._open_spools.enter_context(spool_file)
            self._spools[event.tid] = spool
        if isinstance(event, events.Ioctl) and event.run_exit is not None:
            for seq in range(event.seq, event.seq + event.repeat):  # an entry per call
                spool.write(self._run_line(event, seq))
        else:
            spool.write(f"    - {format_call(raw_entry(event))}\n")

    def _run_line(self, event: events.Ioctl, seq: int) -> str:
        """A VMM's KVM_RUN loop mostly repeats one exit: a thread's KVM_RUN equal to its last
        but for `seq` reuses that one's text after `seq` instead of formatting it again. The
        decoded fields are compared by repr, which unlike == tells mappings apart by key order.
        """
        run = repr(dataclasses.replace(event, seq=0, repeat=1))
        head = f"    - {{call: ioctl, seq: {seq}, "
        last = self._last_runs.get(event.tid)
        if last is not None and last[0] == run:
            return head + last[1]
        line = f"    - {format_call(raw_entry(dataclasses.replace(event, seq=seq)))}\n"
        if line.startswith(head):
            self._last_runs[event.tid] = (run, line[len(head) :])
        return line

    def close(self) -> None:
        self._output.write(f"schema: {RAW_SCHEMA}\nsource: {format_value(self._source)}\n")
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
    entry: Entry = {"call": events.call_name(event), "seq": event.seq}
    if isinstance(event, events.Ioctl):
        entry.update(fd=event.fd, fd_role=event.fd_role)
        entry["req"] = event.name or Hex(event.request)
        entry["arg"] = ioctl_argument(event)
        if event.readable is not None and event.arg != 0:  # NULL says it: none
            entry["readable"] = Hex(event.readable)
        for key, fields in (
            ("in", event.inputs),
            ("entry", event.run_entry),
            ("out", event.outputs),
            ("exit", event.run_exit),
        ):
            if fields is not None:
                entry[key] = _struct_value(fields, key, in_exit=key == "exit")
    else:
        for name in _PLAIN_FIELDS[type(event)]:
            value = getattr(event, name)
            if value is not None:
                entry[name] = _plain_value(value, name)
        if not isinstance(event, events.Call):
            return entry
    if event.errno is not None:
        entry["errno"] = symbolic.errno_name(event.errno)
    elif isinstance(event, _ADDRESS_RESULTS):
        entry["ret"] = Hex(event.ret)
    else:
        entry["ret"] = event.ret
    if isinstance(event, events.Ioctl) and event.new_fd_role is not None:
        entry["new_fd_role"] = event.new_fd_role
    if isinstance(event, events.Ioctl) and event.guest_memory is not None:
        memory = event.guest_memory
        entry["guest_memory"] = {
            "vm": memory.vm_role,
            "pages": memory.pages,
            "sha256": memory.sha256,
        }
    return entry


def _plain_fields(kind: type[events.Event]) -> tuple[str, ...]:
    """The fields written as they are, in their order: a syscall's result comes last, and the
    task events have no result."""
    exclude = {"seq", "tid"} if kind in _TASK_EVENTS else {"seq", "tid", "pid", "ret", "errno"}
    return tuple(name for name in kind.__dataclass_fields__ if name not in exclude)


_TASK_EVENTS = (events.TaskStarted, events.TaskExited, events.KvmRunSummary)
# Which fields an event writes depends only on its class: decided once, not per event.
_PLAIN_FIELDS = {kind: _plain_fields(kind) for kind in get_args(events.Event)}


def ioctl_argument(event: events.Ioctl) -> Value:
    """The raw third argument: `NULL` for a null pointer, else hex (an integer argument too)."""
    spec = IOCTLS.get(event.name or "")
    if event.arg == 0 and spec is not None and decode.decodes_pointer(spec):
        return symbolic.NULL
    return Hex(event.arg)


def _plain_value(value: object, name: str) -> Value:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return Hex(value) if name in _HEX_FIELDS else value
    if isinstance(value, dict):
        return {str(key): _plain_value(item, str(key)) for key, item in value.items()}
    return str(value)


def _struct_value(value: events.FieldValue, name: str, *, in_exit: bool) -> Value:
    # Ordered by how often each kind comes: ints, then the mappings and bytes of decoded structs.
    if isinstance(value, int):
        return symbolic.number(value, name, in_exit=in_exit)
    if isinstance(value, dict):
        return {key: _struct_value(item, key, in_exit=in_exit) for key, item in value.items()}
    if isinstance(value, bytes):
        return symbolic.byte_string(value)
    return [_struct_value(item, name, in_exit=in_exit) for item in value]
