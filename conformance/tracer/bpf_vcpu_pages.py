"""Where each vCPU's kvm_run is, told to the eBPF recorder before the VMM can run it.

The recorder's program copies kvm_run at each KVM_RUN from the address registered for the
call's (process, fd). What is a vCPU fd and where its kvm_run is mapped, the Recorder knows
(its fd tables and mappings: Recorder.vcpu, Recorder.run_address); this handler wraps it and,
after every call that can change that (any traced syscall but KVM_RUN, an exec, a fork),
brings the registrations of that process up to date, while the task that made the call is
still stopped.
The fds asked about are the ones the process's calls returned or mapped (an ioctl's or dup's
result, an mmap's fd): a vCPU fd is always one of those.

The programs are attached once a traced program has opened /dev/kvm (KvmRunRecorder.attach):
no KVM_RUN can come before, and a trace of anything else leaves the kernel's syscalls alone.

A page registered anew is faulted into the VMM's page tables with a process_vm_readv of it:
bpf_probe_read_user cannot fault, and a VMM need not touch kvm_run before its first KVM_RUN
(nor a forked child the pages it inherited, which fork does not copy). madvise and mprotect
may take pages away again: after them every page of the process is faulted in anew.

A vCPU whose VM's guest has not run yet is registered FIRST_RUN (with or without a page), so
that the recorder stops its first KVM_RUN before the guest runs (bpf_run_exits.py); at that
stop the memory is digested (before_first_run) and the VM's vCPUs registered anew without it.
"""

from __future__ import annotations

from conformance.tracer import guest_memory, tracee_memory
from conformance.tracer import ptrace_backend as backend
from conformance.tracer.bpf_kvm_run import KvmRunRecorder, VcpuPage
from conformance.tracer.errors import MemoryReadError, PtraceCallError
from conformance.tracer.kvm_calls import KVM_RUN
from conformance.tracer.kvm_run import PAGE_SIZE
from conformance.tracer.recorder import Recorder
from conformance.tracer.stops import SyscallStop, TaskKind

_PAGES = 3  # kvm_run, the PIO data page, the coalesced MMIO ring page (x86)
_FD_RESULTS = ("ioctl", "dup", "dup2", "dup3", "fcntl")


class RegisteringHandler:
    """A TraceHandler: the Recorder's, plus the recorder's vCPU registrations kept current."""

    def __init__(self, recorder: Recorder, kvm_runs: KvmRunRecorder) -> None:
        self._recorder = recorder
        self._kvm_runs = kvm_runs
        self._names = {
            backend.syscall_number(name): name
            for name in (*_FD_RESULTS, "mmap", "madvise", "mprotect")
        }
        self._ioctl = backend.syscall_number("ioctl")
        self._candidates: dict[int, set[int]] = {}  # tgid -> fds that may name a vCPU
        self._registered: dict[int, dict[int, VcpuPage]] = {}  # tgid -> fd -> page

    def on_syscall_entry(self, stop: SyscallStop) -> bool:
        return self._recorder.on_syscall_entry(stop)

    def on_syscall_exit(self, stop: SyscallStop) -> None:
        self._recorder.on_syscall_exit(stop)
        if stop.nr == self._ioctl and stop.args[1] & 0xFFFFFFFF == KVM_RUN:
            return  # changes no fd and no mapping
        if self._recorder.opened_kvm:
            self._kvm_runs.attach()
        name = self._names.get(stop.nr)
        ret = stop.return_value
        candidates = self._candidates.setdefault(stop.tgid, set())
        if name in _FD_RESULTS and ret is not None and 0 <= ret < 1 << 31:
            candidates.add(ret)
        elif name == "mmap":
            candidates.add(stop.args[4] & 0xFFFFFFFF)
        self._sync(stop.tgid, fault_all=name in ("madvise", "mprotect"))

    def on_new_task(self, parent_tid: int, child_tid: int, kind: TaskKind) -> None:
        self._recorder.on_new_task(parent_tid, child_tid, kind)
        if kind == "process":  # a copy of the parent's fds and mappings
            parent = self._tgid_of(parent_tid)
            self._candidates[child_tid] = set(self._candidates.get(parent, ()))
            self._sync(child_tid, fault_all=False)

    def on_exec(self, tid: int) -> None:
        self._recorder.on_exec(tid)
        self._sync(tid, fault_all=False)

    def on_task_exit(self, tid: int, status: int) -> None:
        self._recorder.on_task_exit(tid, status)
        if tid in self._registered:  # the process is gone (its leader is reported last)
            for fd in self._registered.pop(tid):
                self._kvm_runs.unregister(tid, fd)
            self._candidates.pop(tid, None)

    def _tgid_of(self, tid: int) -> int:
        try:
            return backend.thread_group_and_parent(tid)[0]
        except FileNotFoundError:
            return tid

    def before_first_run(self, tid: int, fd: int) -> None:
        """Task `tid` is stopped in its VM's first KVM_RUN on `fd`, before the guest ran: the
        VM's memory is digested now, and no vCPU of it stops a KVM_RUN for that any more."""
        vcpu = self._recorder.vcpu(tid, fd)
        if vcpu is not None and vcpu.vm is not None:
            guest_memory.take(tid, vcpu.vm)
        for tgid in self._registered:
            self._sync(tgid, fault_all=False)

    def _page(self, tgid: int, fd: int) -> VcpuPage | None:
        """What the programs must know of `fd` in process `tgid`; None when it is no vCPU
        there, or one with neither a kvm_run mapped nor a first run to stop."""
        vcpu = self._recorder.vcpu(tgid, fd)
        if vcpu is None:
            return None
        run_address = self._recorder.run_address(tgid, vcpu)
        vm = vcpu.vm
        first_run = vm is not None and guest_memory.to_digest(vm)
        if run_address is None and not first_run:
            return None
        return VcpuPage(run_address, vm is not None and vm.coalesced_mmio, first_run)

    def _sync(self, tgid: int, *, fault_all: bool) -> None:
        registered = self._registered.setdefault(tgid, {})
        for fd in sorted(self._candidates.get(tgid, ())):
            page = self._page(tgid, fd)
            if page == registered.get(fd):
                if page is not None and fault_all:
                    _fault_in(tgid, page)
                continue
            if page is None:
                del registered[fd]
                self._kvm_runs.unregister(tgid, fd)
                continue
            _fault_in(tgid, page)
            registered[fd] = page
            self._kvm_runs.register(tgid, fd, page)


def _fault_in(tgid: int, vcpu: VcpuPage) -> None:
    """Make the kvm_run pages present in the process's page tables (get_user_pages does it)."""
    if vcpu.run_address is None:
        return
    for page in range(_PAGES if vcpu.ring else _PAGES - 1):
        try:
            tracee_memory.read_memory(tgid, vcpu.run_address + page * PAGE_SIZE, 1)
        except (MemoryReadError, PtraceCallError):
            continue  # not mapped that far: the program copies what is
