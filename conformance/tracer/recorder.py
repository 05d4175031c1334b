"""The TraceHandler that turns the session's syscall stops into events, one callback per event.

Streaming: an event is built at the syscall's exit stop (its return value is part of it) and
handed to `on_event` at once; nothing is kept per call beyond the exit it waits for, and per
vCPU only the answer the next KVM_RUN entry must read, so memory stays flat however long the
trace. `seq` numbers events in the order they are emitted, across threads.

Per-process state follows the kernel: threads share their process's fd table and address space
(the session reports CLONE_THREAD children as "thread"; this assumes they were also created with
CLONE_FILES, as pthread_create does), a forked process gets copies, exec drops close-on-exec
fds and every mapping.
"""

from __future__ import annotations

import errno as errno_codes
import fcntl
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from conformance.abi import _generated as abi
from conformance.model.events import (
    CloseFd,
    DupFd,
    Event,
    EventFd,
    KvmRunMode,
    KvmRunSummary,
    Madvise,
    Mmap,
    Mprotect,
    Mremap,
    Munmap,
    OpenKvm,
    TaskExited,
    TaskStarted,
)
from conformance.model.fd_roles import FdTable, KvmObject, RoleNames
from conformance.tracer import ptrace_backend as backend
from conformance.tracer.fdtable import adopt_open_fds, is_kvm_device_node, kvm_fd_link
from conformance.tracer.kvm_calls import KvmCallDecoder, PendingIoctl
from conformance.tracer.kvm_run import RunMappings, adopt_run_mappings
from conformance.tracer.seccomp import TRACED_SYSCALL_NAMES
from conformance.tracer.stops import SyscallStop, TaskKind
from conformance.tracer.syscall_args import read_c_string, signed_int
from conformance.tracer.vcpu_stats import VcpuExitCounters

_MAX_ERRNO = 4095
_MAP_ANONYMOUS: int = abi.MAP_ANONYMOUS
_EFD_CLOEXEC = os.O_CLOEXEC  # <sys/eventfd.h>: EFD_CLOEXEC is O_CLOEXEC
_OPENAT2_FLAGS_SIZE = 8  # struct open_how starts with __u64 flags
_AT_CWD = -1  # any negative dirfd: AT_FDCWD is the only one the kernel accepts


@dataclass(slots=True)
class _Process:
    pid: int
    fds: FdTable = field(default_factory=FdTable)
    mappings: RunMappings = field(default_factory=RunMappings)


@dataclass(slots=True)
class _Pending:
    name: str
    ioctl: PendingIoctl | None = None
    path: str = ""
    flags: int = 0
    dirfd: int | None = None


class Recorder:
    """Implements session.TraceHandler; feeds `on_event`."""

    def __init__(self, on_event: Callable[[Event], None], *, kvm_run: KvmRunMode) -> None:
        self._on_event = on_event
        self._names = RoleNames()
        self._kvm = KvmCallDecoder(self._names, kvm_run)
        # summary mode: KVM counts each vCPU's exits; read at its end (close, exec, exit)
        self._exit_counters = VcpuExitCounters() if kvm_run == "summary" else None
        self._processes: dict[int, _Process] = {}
        self._pending: dict[int, _Pending] = {}
        self._seq = 0
        # The calls the seccomp filter stops at are the calls decoded here, in both modes.
        self._syscall_names = {backend.syscall_number(name): name for name in TRACED_SYSCALL_NAMES}
        self.opened_kvm = False
        """Whether the traced program opened /dev/kvm (or was attached with it open)."""

    # --- what trace()/attach() call ---------------------------------------------------------

    def started(self, pid: int) -> None:
        self._process(pid, pid)
        self._emit(TaskStarted(self._next_seq(), pid, pid, 0, "process"))

    def adopt(self, pid: int) -> None:
        """Attach: learn the KVM fds and kvm_run mappings the process already has."""
        process = self._process(pid, pid)
        adopt_open_fds(pid, process.fds, self._names)
        adopt_run_mappings(pid, process.fds, process.mappings)
        self.opened_kvm = self.opened_kvm or process.fds.has_kvm_objects()

    def vcpu(self, tid: int, fd: int) -> KvmObject | None:
        """The vCPU `fd` names in `tid`'s process, if it names one."""
        process = self._processes.get(tid)
        vcpu = process.fds.get(fd) if process is not None else None
        return vcpu if vcpu is not None and vcpu.kind == "vcpu" else None

    def run_address(self, tid: int, vcpu: KvmObject) -> int | None:
        """Where `vcpu`'s kvm_run is mapped in `tid`'s process (None: it is not)."""
        process = self._processes.get(tid)
        mapping = process.mappings.by_vcpu.get(vcpu) if process is not None else None
        return mapping.run_address if mapping is not None else None

    # --- session.TraceHandler -----------------------------------------------------------------

    def on_new_task(self, parent_tid: int, child_tid: int, kind: TaskKind) -> None:
        parent = self._processes.get(parent_tid)
        if kind == "thread" and parent is not None:
            self._processes[child_tid] = parent
            pid = parent.pid
        else:
            pid = child_tid
            self._processes[child_tid] = _Process(
                child_tid,
                parent.fds.copy() if parent is not None else FdTable(),
                parent.mappings.copy() if parent is not None else RunMappings(),
            )
        self._emit(TaskStarted(self._next_seq(), child_tid, pid, parent_tid, kind))

    def on_exec(self, tid: int) -> None:
        process = self._process(tid, tid)
        process.fds.after_exec()
        process.mappings = RunMappings()
        self._pending.pop(tid, None)
        self._summarize_ended_vcpus(tid, process.pid)

    def on_task_exit(self, tid: int, status: int) -> None:
        process = self._processes.pop(tid, None)
        self._pending.pop(tid, None)
        pid = process.pid if process is not None else tid
        if tid == pid:  # the group's leader is reported last: the process is gone
            self._summarize_ended_vcpus(tid, pid)
        self._emit(TaskExited(self._next_seq(), tid, pid, os.waitstatus_to_exitcode(status)))

    def finish(self) -> None:
        """The trace ended (or we detached): summarize the vCPUs still open."""
        if self._exit_counters is not None:
            for vcpu, tid, pid in self._exit_counters.remaining():
                self._summarize(vcpu, tid, pid)

    def on_syscall_entry(self, stop: SyscallStop) -> bool:
        name = self._syscall_names.get(stop.nr)
        if name is None:
            return False
        process = self._process(stop.tid, stop.tgid)
        pending = self._entry(name, stop, process)
        if pending is None:
            return False
        self._pending[stop.tid] = pending
        return True

    def on_syscall_exit(self, stop: SyscallStop) -> None:
        pending = self._pending.pop(stop.tid, None)
        if pending is None or stop.return_value is None:
            return
        process = self._process(stop.tid, stop.tgid)
        ret = stop.return_value
        errno = -ret if -_MAX_ERRNO <= ret < 0 else None
        self._exit(pending, stop, process, ret, errno)

    # --- per syscall --------------------------------------------------------------------------

    def _entry(self, name: str, stop: SyscallStop, process: _Process) -> _Pending | None:
        args = stop.args
        if name == "ioctl":
            ioctl = self._kvm.entry(stop, process.fds, process.mappings)
            return _Pending(name, ioctl=ioctl) if ioctl is not None else None
        if name in ("open", "openat", "openat2"):
            path_arg, flags = (args[0], args[1]) if name == "open" else (args[1], args[2])
            if name == "openat2":
                # An unreadable struct open_how: the kernel fails the call with EFAULT.
                flags = int.from_bytes(stop.read_prefix(args[2], _OPENAT2_FLAGS_SIZE), "little")
            path = read_c_string(stop, path_arg)
            directory_fd = _AT_CWD if name == "open" else signed_int(args[0])
            if _names_a_file_but_no_device(stop.tid, directory_fd, path):
                return None  # an import, a library, a config file: no KVM fd can come of it
            dirfd = None if name == "open" else directory_fd
            return _Pending(name, path=path, flags=flags, dirfd=dirfd)
        if name in ("close", "dup", "dup3", "dup2", "fcntl"):
            fd = signed_int(args[0])
            overwrites_kvm_fd = name in ("dup2", "dup3") and process.fds.get(signed_int(args[1]))
            if process.fds.get(fd) is None and not overwrites_kvm_fd:
                return None
            return _Pending(name)
        return _Pending(name)

    def _exit(
        self, pending: _Pending, stop: SyscallStop, process: _Process, ret: int, errno: int | None
    ) -> None:
        name, args, fds = pending.name, stop.args, process.fds
        seq_tid_pid = (stop.tid, stop.tgid, ret, errno)
        if pending.ioctl is not None:
            event = self._kvm.exit(
                stop,
                pending.ioctl,
                fds,
                process.mappings,
                seq=self._next_seq(),
                ret=ret,
                errno=errno,
            )
            self._seq += event.repeat - 1  # merged calls keep their numbers
            self._emit(event)
            if event.name == "KVM_CREATE_VCPU" and errno is None and self._exit_counters:
                vcpu = fds.get(ret)
                if vcpu is not None:
                    self._exit_counters.vcpu_created(stop, vcpu, ret)
        elif name in ("open", "openat", "openat2"):
            self._opened(pending, stop, process, ret, errno)
        elif name == "mmap":
            fd = signed_int(args[4])
            target = None if args[3] & _MAP_ANONYMOUS else fds.get(fd)
            if target is not None and errno is None and target.kind == "vcpu":
                process.mappings.mapped(target, ret, args[1], args[5])
            self._emit(
                Mmap(
                    self._next_seq(),
                    *seq_tid_pid,
                    args[0],
                    args[1],
                    args[2],
                    args[3],
                    fd,
                    target.role if target is not None else None,
                    args[5],
                )
            )
        elif name == "munmap":
            if errno is None:
                process.mappings.unmapped(args[0], args[1])
            self._emit(Munmap(self._next_seq(), *seq_tid_pid, args[0], args[1]))
        elif name == "mremap":
            if errno is None and ret != args[0]:
                process.mappings.unmapped(args[0], args[1])
            self._emit(
                Mremap(self._next_seq(), *seq_tid_pid, args[0], args[1], args[2], args[3], args[4])
            )
        elif name == "mprotect":
            self._emit(Mprotect(self._next_seq(), *seq_tid_pid, args[0], args[1], args[2]))
        elif name == "madvise":
            self._emit(Madvise(self._next_seq(), *seq_tid_pid, args[0], args[1], args[2]))
        elif name in ("eventfd", "eventfd2"):
            flags = args[1] & 0xFFFFFFFF if name == "eventfd2" else 0
            if errno is None:
                fds.add(
                    ret, self._names.numbered("eventfd"), close_on_exec=bool(flags & _EFD_CLOEXEC)
                )
            self._emit(EventFd(self._next_seq(), *seq_tid_pid, args[0] & 0xFFFFFFFF, flags))
        elif name == "close":
            self._closed(stop, process, signed_int(args[0]), ret, errno)
        else:
            self._duplicated(name, stop, process, ret, errno)

    def _opened(
        self, pending: _Pending, stop: SyscallStop, process: _Process, ret: int, errno: int | None
    ) -> None:
        role = None
        if errno is None:
            if not is_kvm_device_node(kvm_fd_link(stop.tgid, ret)):
                return
            kvm = self._names.kvm()
            process.fds.add(ret, kvm, close_on_exec=bool(pending.flags & os.O_CLOEXEC))
            self.opened_kvm = True
            role = kvm.role
        elif not is_kvm_device_node(os.path.normpath(pending.path)):
            return
        self._emit(
            OpenKvm(
                seq=self._next_seq(),
                tid=stop.tid,
                pid=stop.tgid,
                ret=ret,
                errno=errno,
                path=pending.path,
                flags=pending.flags,
                fd_role=role,
                syscall=pending.name,
                dirfd=pending.dirfd,
            )
        )

    def _closed(
        self, stop: SyscallStop, process: _Process, fd: int, ret: int, errno: int | None
    ) -> None:
        # Linux releases the fd even when close() reports an error (EINTR, EIO), except EBADF.
        target = process.fds.close(fd) if errno != errno_codes.EBADF else process.fds.get(fd)
        if target is None:
            return
        if not process.fds.references(target):
            self._kvm.forget(target)
            self._summarize_ended_vcpus(stop.tid, stop.tgid)
        self._emit(CloseFd(self._next_seq(), stop.tid, stop.tgid, ret, errno, fd, target.role))

    def _duplicated(
        self, name: str, stop: SyscallStop, process: _Process, ret: int, errno: int | None
    ) -> None:
        args, fds = stop.args, process.fds
        old_fd = signed_int(args[0])
        if name == "fcntl":
            command = args[1] & 0xFFFFFFFF
            if command == fcntl.F_SETFD:
                if errno is None:
                    fds.set_close_on_exec(old_fd, bool(args[2] & fcntl.FD_CLOEXEC))
                return
            close_on_exec = command == fcntl.F_DUPFD_CLOEXEC
        else:
            close_on_exec = name == "dup3" and bool(args[2] & os.O_CLOEXEC)
        if errno is not None:
            return
        new_fd = signed_int(args[1]) if name in ("dup2", "dup3") else ret
        made = fds.duplicate(old_fd, new_fd, close_on_exec=close_on_exec)
        if made.closed is not None:
            self._emit(
                CloseFd(
                    seq=self._next_seq(),
                    tid=stop.tid,
                    pid=stop.tgid,
                    ret=0,
                    errno=None,
                    fd=new_fd,
                    fd_role=made.closed.role,
                )
            )
        if made.target is not None:
            self._emit(
                DupFd(
                    seq=self._next_seq(),
                    tid=stop.tid,
                    pid=stop.tgid,
                    ret=ret,
                    errno=errno,
                    syscall=name,
                    old_fd=old_fd,
                    fd_role=made.target.role,
                )
            )

    # --- summary mode -------------------------------------------------------------------------

    def _summarize_ended_vcpus(self, tid: int, pid: int) -> None:
        """Emit the counters of watched vCPUs no live process has an fd for any more."""
        counters = self._exit_counters
        if counters is None:
            return
        live_tables = {id(p.fds): p.fds for p in self._processes.values()}.values()
        for vcpu, _tid, _pid in counters.remaining():
            if not any(fds.references(vcpu) for fds in live_tables):
                self._summarize(vcpu, tid, pid)

    def _summarize(self, vcpu: KvmObject, tid: int, pid: int) -> None:
        assert self._exit_counters is not None
        counts = self._exit_counters.finished(vcpu)
        if counts is not None:
            self._emit(KvmRunSummary(self._next_seq(), tid, pid, vcpu.role, counts))

    # --- plumbing -----------------------------------------------------------------------------

    def _process(self, tid: int, tgid: int) -> _Process:
        process = self._processes.get(tid)
        if process is None:
            process = self._processes.get(tgid) or _Process(tgid)
            self._processes[tid] = process
        return process

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _emit(self, event: Event) -> None:
        self._on_event(event)


def _names_a_file_but_no_device(tid: int, directory_fd: int, path: str) -> bool:
    """Whether `path`, as task `tid` resolves it, is an existing file that is not a character
    device: opening it cannot give a KVM fd, so its exit stop (~20-60 us) is not needed; a stat
    costs a few. A Python VMM opens ~170 files while it starts. Nonexistent paths and devices
    keep their exit stop: the exit decides, as for every open before this check."""
    if path.startswith("/"):
        where = f"/proc/{tid}/root{path}"
    elif directory_fd < 0:
        where = f"/proc/{tid}/cwd/{path}"
    else:
        where = f"/proc/{tid}/fd/{directory_fd}/{path}"
    try:
        mode = os.stat(where).st_mode
    except OSError:
        return False
    return not stat.S_ISCHR(mode)
