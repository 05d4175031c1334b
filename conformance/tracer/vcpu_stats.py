"""Per-vCPU exit counters from KVM's binary statistics, for `--kvm-run=summary`.

KVM_RUN then runs without any stop, so the tracer cannot count exits itself; KVM counts them
(kvm_vcpu_stat: exits, halt_exits, mmio_exits, ...). The vCPU stats fd has to be created by
the process that owns the vCPU (KVM answers EIO to KVM_GET_STATS_FD on a vCPU fd duplicated
into another process), so at the KVM_CREATE_VCPU exit stop the tracee is made to issue it
(inject.py), the tracer takes the new fd with pidfd_getfd and makes the tracee close its copy:
the tracee's fd table ends as it would have been untraced.

The stats fd holds a reference on the VM, so ours stays readable after the tracee closed the
vCPU, the VM, or ended: the last read can happen at the vCPU's close or its process's end.

File layout (Documentation/virt/kvm/api.rst, "KVM_GET_STATS_FD"): a kvm_stats_header, then
num_desc descriptors of sizeof(kvm_stats_desc) + name_size bytes each at desc_offset, then
the values (u64 each) at data_offset + descriptor.offset. Recorded: every cumulative counter
without a unit (exits, halt_exits, io_exits, ...), as the change since the vCPU was created;
instant values, peaks, histograms and times (halt_poll_*_ns...) are not exit counts.
"""

from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import dataclass

from conformance.abi import _generated as abi
from conformance.abi.ioctls import by_name
from conformance.model.fd_roles import KvmObject
from conformance.tracer import inject
from conformance.tracer import ptrace_backend as backend
from conformance.tracer.errors import TaskGoneError
from conformance.tracer.inject import InjectionError
from conformance.tracer.stops import SyscallStop

_HEADER_SIZE = ctypes.sizeof(abi.kvm_stats_header)
_DESCRIPTOR_SIZE = ctypes.sizeof(abi.kvm_stats_desc)
_VALUE = struct.Struct("<Q")
_KVM_GET_STATS_FD = by_name("KVM_GET_STATS_FD").number
_MAX_ERRNO = 4095


@dataclass(frozen=True, slots=True)
class _Counter:
    name: str
    offset: int  # of its u64 in the stats file, from the start


class _StatsFile:
    """Our duplicate of one vCPU's stats fd and where its exit counters are."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        header = abi.kvm_stats_header.from_buffer_copy(os.pread(fd, _HEADER_SIZE, 0))
        stride = _DESCRIPTOR_SIZE + header.name_size
        table = os.pread(fd, stride * header.num_desc, header.desc_offset)
        self._counters: list[_Counter] = []
        for index in range(header.num_desc):
            start = index * stride
            descriptor = abi.kvm_stats_desc.from_buffer_copy(table, start)
            kind = descriptor.flags & abi.KVM_STATS_TYPE_MASK
            unit = descriptor.flags & abi.KVM_STATS_UNIT_MASK
            if kind != abi.KVM_STATS_TYPE_CUMULATIVE or unit != abi.KVM_STATS_UNIT_NONE:
                continue
            name = table[start + _DESCRIPTOR_SIZE : start + stride].split(b"\0", 1)[0]
            offset = header.data_offset + descriptor.offset
            self._counters.append(_Counter(name.decode("ascii"), offset))
        self._data_start = min((c.offset for c in self._counters), default=0)
        self._data_size = max((c.offset for c in self._counters), default=0) + 8
        self._data_size -= self._data_start
        self.at_creation = self.values()

    def values(self) -> dict[str, int]:
        data = os.pread(self.fd, self._data_size, self._data_start)
        return {
            counter.name: _VALUE.unpack_from(data, counter.offset - self._data_start)[0]
            for counter in self._counters
        }


@dataclass(slots=True)
class _Watched:
    stats: _StatsFile
    tid: int  # the thread that created the vCPU, and its process
    pid: int


class VcpuExitCounters:
    """The stats fds of the vCPUs being traced in summary mode, keyed by vCPU object."""

    def __init__(self) -> None:
        self._watched: dict[KvmObject, _Watched] = {}

    def vcpu_created(self, stop: SyscallStop, vcpu: KvmObject, vcpu_fd: int) -> bool:
        """At KVM_CREATE_VCPU's exit stop: take the vCPU's stats fd. False when the host or
        the tracee's state does not allow it (no binary stats, not at a `syscall`), or the
        tracee was killed meanwhile (the vCPU then goes uncounted)."""
        try:
            local_fd = self._take_stats_fd(stop, vcpu_fd)
        except (InjectionError, TaskGoneError):
            return False
        if local_fd is None:
            return False
        self._watched[vcpu] = _Watched(_StatsFile(local_fd), stop.tid, stop.tgid)
        return True

    @staticmethod
    def _take_stats_fd(stop: SyscallStop, vcpu_fd: int) -> int | None:
        if not inject.can_inject(stop.tid, stop.instruction_pointer):
            return None
        ioctl, close = backend.syscall_number("ioctl"), backend.syscall_number("close")
        remote_fd = inject.inject_syscall(
            stop.tgid, stop.tid, ioctl, (vcpu_fd, _KVM_GET_STATS_FD, 0)
        )
        if -_MAX_ERRNO <= remote_fd < 0:
            return None
        try:
            pidfd = backend.pidfd_open(stop.tgid)
            try:
                return backend.pidfd_getfd(pidfd, remote_fd)
            finally:
                os.close(pidfd)
        finally:
            inject.inject_syscall(stop.tgid, stop.tid, close, (remote_fd,))

    def finished(self, vcpu: KvmObject) -> dict[str, int] | None:
        """The vCPU is gone (closed, or its process ended): its counters' change since
        creation; None when it was not watched."""
        watched = self._watched.pop(vcpu, None)
        if watched is None:
            return None
        stats = watched.stats
        try:
            now = stats.values()
        finally:
            os.close(stats.fd)
        return {name: now[name] - before for name, before in stats.at_creation.items()}

    def remaining(self) -> list[tuple[KvmObject, int, int]]:
        """(vCPU, creating tid, pid) of every vCPU still watched."""
        return [(vcpu, w.tid, w.pid) for vcpu, w in self._watched.items()]
