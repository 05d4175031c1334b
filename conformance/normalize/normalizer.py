"""Raw tracer events -> a normalized, deterministic trace document.

`Normalizer.add` takes events as the tracer produces them; `finish` returns the document. What
changes from run to run is replaced by what stays the same: fd numbers by roles (the tracer's
fd_role), host addresses by `mapping+0xOFFSET`, thread ids by what each thread does, flag bits and
enum values by names (`model.symbolic`). Only what concerns KVM is kept: KVM calls, and the
memory calls on mappings a KVM call referenced. Consecutive identical KVM_RUN calls are counted
(`repeat: N`) as they arrive, so a long guest run costs memory per distinct exit, not per exit.

Decisions that can only be made later (is this mmap guest memory? which thread is `main`?) are
kept pending and made in `finish`; docs/trace-format.md lists every rule.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

from conformance.abi.ioctls import IOCTLS, ArgKind
from conformance.model import events, register_pages, symbolic
from conformance.model.document import (
    GUEST_MEMORY,
    Entry,
    Hex,
    TraceCall,
    TraceDocument,
    Value,
    ordered_threads,
)
from conformance.model.portable import make_portable
from conformance.normalize.address_space import (
    AddressRef,
    AddressSpace,
    HostMapping,
    NamedResource,
    ResourceRef,
)
from conformance.normalize.thread_roles import ThreadFacts, assign_roles

Pending: TypeAlias = "Value | AddressRef | ResourceRef | list[Pending] | dict[str, Pending]"
PendingEntry: TypeAlias = dict[str, Pending]

UNMAPPED = "unmapped"  # a host pointer outside every traced mapping (heap, stack)
_COMPACT_EVERY = 4096  # pending calls per thread between sweeps of calls that cannot be kept


@dataclass(eq=False, slots=True)
class _PendingCall:
    entry: PendingEntry
    anchor: NamedResource | None = None  # kept only if this resource turns out relevant
    repeat: int = 1  # KVM_RUN run-length


@dataclass(eq=False, slots=True)
class _Process:
    fork_path: tuple[int, ...]  # root processes (n,), their children (n, k), ...
    space: AddressSpace
    eventfds: dict[int, NamedResource] = field(default_factory=dict)
    forks: int = 0


@dataclass(eq=False, slots=True)
class _Thread:
    index: int  # order of first appearance: identifies the thread, never shown
    process: _Process
    facts: ThreadFacts = field(default_factory=ThreadFacts)
    calls: list[_PendingCall] = field(default_factory=list)
    made: int = 0  # calls seen so far, kept or not: a stable position for naming


class Normalizer:
    def __init__(self, source: Mapping[str, Value] | None = None) -> None:
        self._source: Entry = dict(source or {})
        self._threads: list[_Thread] = []
        self._live_threads: dict[int, _Thread] = {}  # tid -> thread (tids are reused)
        self._processes: dict[int, _Process] = {}  # pid -> live process
        self._resources: list[NamedResource] = []

    # -- intake -----------------------------------------------------------------------------

    def add(self, event: events.Event) -> None:
        match event:
            case events.TaskStarted():
                self._task_started(event)
            case events.TaskExited():
                self._live_threads.pop(event.tid, None)
            case events.OpenKvm():
                self._open(event)
            case events.Ioctl():
                self._ioctl(event)
            case events.Mmap():
                self._mmap(event)
            case events.Munmap() | events.Mprotect() | events.Madvise() | events.Mremap():
                self._memory_call(event)
            case events.DupFd():
                self._append(event, {"call": event.syscall, "fd": event.fd_role}, kvm_fd=True)
            case events.CloseFd():
                self._append(event, {"call": "close", "fd": event.fd_role}, kvm_fd=True)
            case events.EventFd():
                self._eventfd(event)
            case events.KvmRunSummary():
                counters: dict[str, Pending] = dict(sorted(event.counters.items()))
                entry: PendingEntry = {"call": "kvm_run_summary", "fd": event.vcpu_role}
                self._append(event, entry | {"out": counters}, kvm_fd=True)

    def _task_started(self, event: events.TaskStarted) -> None:
        parent = self._live_threads.get(event.parent_tid)
        # The traced command itself is announced too, with no parent the trace knows.
        if event.kind == "process" and parent is not None and event.pid not in self._processes:
            parent.process.forks += 1
            self._processes[event.pid] = _Process(
                fork_path=(*parent.process.fork_path, parent.process.forks),
                space=parent.process.space.fork_copy(),
            )
        self._thread(event.tid, event.pid)

    def _thread(self, tid: int, pid: int) -> _Thread:
        thread = self._live_threads.get(tid)
        if thread is None:
            process = self._processes.get(pid)
            if process is None:  # a process the tracer started or attached to, not a fork
                roots = sum(1 for p in self._processes.values() if len(p.fork_path) == 1)
                process = self._processes[pid] = _Process((roots,), AddressSpace())
            thread = _Thread(len(self._threads), process)
            self._threads.append(thread)
            self._live_threads[tid] = thread
        return thread

    def _append(
        self,
        event: events.Call | events.KvmRunSummary,
        entry: PendingEntry,
        *,
        anchor: NamedResource | None = None,
        kvm_fd: bool = False,
    ) -> None:
        thread = self._thread(event.tid, event.pid)
        repeat = event.repeat if isinstance(event, events.Ioctl) else 1
        thread.made += repeat
        if kvm_fd:
            thread.facts.touched_kvm = True
        calls = thread.calls
        if entry.get("req") == "KVM_RUN" and calls and calls[-1].entry == entry:
            calls[-1].repeat += repeat
            return
        calls.append(_PendingCall(entry, anchor, repeat))
        if len(calls) % _COMPACT_EVERY == 0:
            # Memory unmapped before any KVM call referenced it never will be: its calls go now,
            # so that a VMM churning through malloc arenas does not fill the pending lists.
            thread.calls = [call for call in calls if not _unreferenced_and_gone(call.anchor)]

    def _new_resource(self, event: events.Call, kind: str, fixed_name: str | None) -> NamedResource:
        thread = self._thread(event.tid, event.pid)
        resource = NamedResource(kind, thread.index, thread.made, fixed_name)
        self._resources.append(resource)
        return resource

    def _open(self, event: events.OpenKvm) -> None:
        entry: PendingEntry = {"call": "open", "path": event.path}
        entry["flags"] = list(symbolic.open_flags(event.flags))
        entry.update(_result(event, event.fd_role))
        self._thread(event.tid, event.pid).facts.opened_kvm = True
        self._append(event, entry, kvm_fd=True)

    def _ioctl(self, event: events.Ioctl) -> None:
        thread = self._thread(event.tid, event.pid)
        request = event.name or ""
        entry: PendingEntry = {"call": "ioctl", "fd": event.fd_role}
        entry["req"] = event.name if event.name is not None else Hex(event.request)
        spec = IOCTLS.get(request)
        if spec is not None and (
            spec.arg_kind is ArgKind.INTEGER or (spec.arg_kind is ArgKind.NONE and event.arg)
        ):
            entry["arg"] = symbolic.ioctl_argument(request, event.arg)
        elif event.readable is not None:  # a pointer the tracer could not read whole
            entry["arg"] = symbolic.NULL if event.arg == 0 else symbolic.UNREADABLE
        struct_name = spec.arg_type if spec is not None else None
        inputs = event.run_entry if request == "KVM_RUN" else event.inputs
        if inputs:
            inputs = register_pages.decode_pages(struct_name, inputs)
            entry["in"] = self._struct(inputs, request, thread.process)
        if event.run_exit:
            entry["exit"] = symbolic.exit_fields(event.run_exit)
        answer: dict[str, Pending] = {}
        if event.outputs:
            outputs = register_pages.decode_pages(struct_name, event.outputs)
            answer.update(self._struct(outputs, request, thread.process))
        if event.new_fd_role is not None:
            entry.update(_result(event, event.new_fd_role))
        else:
            entry.update(_result(event, None))
            if event.errno is None and event.ret != 0:
                answer["ret"] = event.ret  # API version, CHECK_EXTENSION's answer, mmap size
        if answer:
            entry["out"] = answer
        if request == "KVM_CREATE_VM":
            thread.facts.opened_kvm = True
        if request == "KVM_RUN":
            thread.facts.runs.add(event.fd_role)
        if event.guest_memory is not None:
            self._guest_memory(event.guest_memory)
        self._append(event, entry, kvm_fd=True)

    def _guest_memory(self, digest: events.GuestMemoryDigest) -> None:
        """Provenance: the guest memory each VM started from (compared: whether two traces
        ran the same guest, before their KVM_RUN exits are compared)."""
        recorded = self._source.setdefault(GUEST_MEMORY, {})
        if isinstance(recorded, dict):
            recorded.setdefault(digest.vm_role, {"pages": digest.pages, "sha256": digest.sha256})

    def _struct(self, fields: events.Fields, request: str, process: _Process) -> dict[str, Pending]:
        return {name: self._field(name, value, request, process) for name, value in fields.items()}

    def _field(
        self, name: str, value: events.FieldValue, request: str, process: _Process
    ) -> Pending:
        if isinstance(value, dict):
            return self._struct(value, request, process)
        if isinstance(value, list):
            return [self._field(name, item, request, process) for item in value]
        if isinstance(value, bytes):
            return symbolic.byte_string(value)
        if name in symbolic.HOST_POINTER_FIELDS.get(request, ()):
            return _host_pointer(
                process, value, guest_memory=request.startswith("KVM_SET_USER_MEMORY_REGION")
            )
        if name in symbolic.EVENTFD_FIELDS.get(request, ()):
            eventfd = process.eventfds.get(value)
            if eventfd is None:
                return Hex(value)
            eventfd.mark_relevant()
            return ResourceRef(eventfd)
        flags = symbolic.STRUCT_FLAG_FIELDS.get(request, {}).get(name)
        if flags is not None:
            return list(flags.names(value))
        enum = symbolic.STRUCT_ENUM_FIELDS.get(name)
        if enum is not None:
            return enum.name(value)
        return symbolic.number(value, name)

    def _mmap(self, event: events.Mmap) -> None:
        if event.errno is not None:
            return  # a failed mmap maps nothing KVM could use
        process = self._thread(event.tid, event.pid).process
        entry: PendingEntry = {"call": "mmap"}
        if event.addr:
            entry["addr"] = _host_pointer(process, event.addr, mark=False)
        entry["len"] = Hex(event.length)
        entry["prot"] = list(symbolic.MMAP_PROT.names(event.prot))
        entry["flags"] = list(symbolic.MMAP_FLAGS.names(event.flags))
        fixed_name = None
        if event.fd_role is not None:
            entry["fd"] = event.fd_role
            entry["offset"] = Hex(event.offset)
            fixed_name = (
                f"kvm_run:{event.fd_role}"
                if event.offset == 0
                else f"{event.fd_role}@{Hex(event.offset)!r}"
            )
        thread = self._thread(event.tid, event.pid)
        mapping = HostMapping(
            kind="region",
            creator=thread.index,
            position=thread.made,
            fixed_name=fixed_name,
            start=event.ret,
            length=event.length,
        )
        self._resources.append(mapping)
        process.space.add(mapping)
        container = mapping.parent
        if event.addr and container is not None and container.contains(event.addr):
            # The address is named by the mapping the new one was placed in, not by one it
            # replaced there: remapping the same guest memory 1,500 times is one reservation
            # and its latest RAM, not a chain of 1,500 mappings each naming the one before.
            entry["addr"] = AddressRef(container, event.addr - container.start)
        if fixed_name is not None:  # a KVM fd's pages (kvm_run): always part of the trace
            mapping.mark_relevant()
        entry["ret"] = ResourceRef(mapping)
        self._append(event, entry, anchor=mapping, kvm_fd=fixed_name is not None)

    def _memory_call(
        self, event: events.Munmap | events.Mprotect | events.Madvise | events.Mremap
    ) -> None:
        """munmap/mprotect/madvise/mremap: kept when the mapping they act on is."""
        if event.errno is not None:
            return
        process = self._thread(event.tid, event.pid).process
        start = event.old_addr if isinstance(event, events.Mremap) else event.addr
        target = process.space.locate(start)
        if target is None:
            return  # memory no KVM call can have referenced: never traced before it was mapped
        entry: PendingEntry = {"call": type(event).__name__.lower(), "addr": target}
        match event:
            case events.Munmap():
                entry["len"] = Hex(event.length)
                process.space.remove(event.addr, event.length)
            case events.Mprotect():
                entry["len"] = Hex(event.length)
                entry["prot"] = list(symbolic.MMAP_PROT.names(event.prot))
            case events.Madvise():
                entry["len"] = Hex(event.length)
                entry["advice"] = symbolic.MADVICE.name(event.advice)
            case events.Mremap():
                entry["old_len"] = Hex(event.old_length)
                entry["new_len"] = Hex(event.new_length)
                entry["flags"] = list(symbolic.MREMAP_FLAGS.names(event.flags))
                process.space.move(target.mapping, event.new_addr, event.new_length)
        self._append(event, entry, anchor=target.mapping)

    def _eventfd(self, event: events.EventFd) -> None:
        if event.errno is not None:
            return
        process = self._thread(event.tid, event.pid).process
        eventfd = self._new_resource(event, "eventfd", None)
        process.eventfds[event.ret] = eventfd
        entry: PendingEntry = {"call": "eventfd2", "initval": event.initval}
        entry["flags"] = list(symbolic.EVENTFD_FLAGS.names(event.flags))
        entry["ret"] = ResourceRef(eventfd)
        self._append(event, entry, anchor=eventfd)

    # -- finish -----------------------------------------------------------------------------

    def finish(self) -> TraceDocument:
        kept = self._kept()
        # A kept call may name a mapping nothing else made relevant: an mmap whose address
        # hint lies in a mapping it then replaced (MAP_FIXED over a smaller one). That mapping
        # is named too, and its own calls kept, until nothing new is referenced.
        while unnamed := {
            id(resource): resource
            for calls in kept.values()
            for call in calls
            for resource in _references(call.entry)
            if not resource.relevant
        }:
            for resource in unnamed.values():
                resource.mark_relevant()
            kept = self._kept()
        active = [thread for thread in self._threads if kept[thread.index]]
        for thread in active:
            thread.facts.first_call = _first_activity(kept[thread.index][0].entry)
        processes = {id(thread.process): thread.process for thread in active}
        multi_process = len(processes) > 1

        def process_label(thread: _Thread) -> str:
            path = ".".join(str(step) for step in thread.process.fork_path)
            return f"proc{path}/" if multi_process else ""

        base_roles = {
            thread.index: process_label(thread) + thread.facts.base_role() for thread in active
        }
        self._name_resources(base_roles)
        rendered = {
            thread.index: _merge_runs([_render_call(call) for call in kept[thread.index]])
            for thread in active
        }
        roles = assign_roles([(base_roles[t.index], rendered[t.index]) for t in active])
        document = TraceDocument(
            source=dict(self._source),
            threads=ordered_threads(
                (role, rendered[thread.index]) for role, thread in zip(roles, active, strict=True)
            ),
        )
        # Last: thread roles are named from the calls as made, probes included.
        return make_portable(document)

    def _kept(self) -> dict[int, list[_PendingCall]]:
        return {
            thread.index: [
                call for call in thread.calls if call.anchor is None or call.anchor.relevant
            ]
            for thread in self._threads
        }

    def _name_resources(self, base_roles: Mapping[int, str]) -> None:
        """Number relevant resources per kind in order of (creating thread's role, position)."""
        relevant = [r for r in self._resources if r.relevant and r.origin is None]
        relevant.sort(key=lambda r: (base_roles.get(r.creator, ""), r.position, r.kind))
        counters: dict[str, int] = {}
        for resource in relevant:
            stem = resource.fixed_name or resource.kind
            seen = counters.get(stem, 0)
            counters[stem] = seen + 1
            if resource.fixed_name is not None:
                resource.name = stem if seen == 0 else f"{stem}#{seen + 1}"
            else:
                resource.name = f"{stem}{seen}"


def _result(event: events.Call, role: str | None) -> PendingEntry:
    """A call's outcome as compared: the fd role it created, or the error it failed with."""
    if event.errno is not None:
        return {"errno": symbolic.errno_name(event.errno)}
    return {"ret": role} if role is not None else {}


def _host_pointer(
    process: _Process, address: int, *, mark: bool = True, guest_memory: bool = False
) -> Pending:
    if address == 0:
        return Hex(0)
    target = process.space.locate(address)
    if target is None:
        return UNMAPPED
    if mark:
        target.mapping.mark_relevant()
    if guest_memory:
        target.mapping.mark_guest_memory()
    return target


def _unreferenced_and_gone(anchor: NamedResource | None) -> bool:
    return isinstance(anchor, HostMapping) and not anchor.alive and not anchor.relevant


def _first_activity(entry: PendingEntry) -> str:
    fd = entry.get("fd")
    return fd if isinstance(fd, str) else str(entry.get("call"))


def _references(entry: PendingEntry) -> Iterator[NamedResource]:
    """The mappings and eventfds a pending call names (iteratively: entries nest)."""
    stack: list[Pending] = list(entry.values())
    while stack:
        value = stack.pop()
        if isinstance(value, AddressRef):
            yield value.mapping
        elif isinstance(value, ResourceRef):
            yield value.resource
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


def _render(value: Pending) -> Value:
    if isinstance(value, AddressRef | ResourceRef):
        return value.render()
    if isinstance(value, dict):
        return {key: _render(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_render(item) for item in value]
    return value


def _render_call(call: _PendingCall) -> Entry:
    entry = {key: _render(value) for key, value in call.entry.items()}
    if call.repeat > 1:
        entry["repeat"] = call.repeat
    return entry


def _merge_runs(entries: list[Entry]) -> list[TraceCall]:
    """Join identical KVM_RUN calls that became adjacent when the calls between were dropped."""
    merged: list[Entry] = []
    for entry in entries:
        previous = merged[-1] if merged else None
        if previous is not None and entry.get("req") == "KVM_RUN" and _same_run(previous, entry):
            total = _repeat(previous) + _repeat(entry)
            previous["repeat"] = total
            continue
        merged.append(entry)
    return [TraceCall(entry) for entry in merged]


def _repeat(entry: Entry) -> int:
    count = entry.get("repeat", 1)
    return count if isinstance(count, int) else 1


def _same_run(left: Entry, right: Entry) -> bool:
    def strip(entry: Entry) -> Entry:
        return {key: value for key, value in entry.items() if key != "repeat"}

    return strip(left) == strip(right)
