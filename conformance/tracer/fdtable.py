"""Which KVM object each file descriptor of a traced process names, and how fds come and go.

A `KvmObject` is the kernel object (the /dev/kvm open file, a VM, a vCPU, a device, a stats
fd, an eventfd); an `FdTable` maps fd numbers to objects. dup/dup2/dup3/F_DUPFD make a second fd
for the same object, so they share its role. Tables follow the kernel's rules for `struct
files_struct`: threads created with CLONE_FILES share one table, fork copies it, exec closes the
close-on-exec fds.

Roles are unique over the whole trace, numbered in creation order: "kvm", "kvm2", "vm", "vm2",
"device0", "stats0", "eventfd0"... A vCPU is named by the id the VMM passed to KVM_CREATE_VCPU:
"vcpu0" for the first VM, "vm2.vcpu0" for a second one (so two VMs' vCPUs never collide).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass(eq=False, slots=True)
class KvmObject:
    """One kernel object behind one or more fds; per-object state the decoders need lives here."""

    role: str
    kind: str  # "kvm", "vm", "vcpu", "device", "stats", "eventfd"
    vm: KvmObject | None = None  # the VM a vCPU/device/stats fd belongs to
    # VM only: slot -> memory_size (dirty bitmaps are sized by their slot), whether a coalesced
    # MMIO zone was registered (the ring then needs reading), KVM_CAP_XSAVE2's answer (the
    # size of kvm_xsave with its variable tail).
    slot_sizes: dict[int, int] = field(default_factory=dict)
    coalesced_mmio: bool = False
    coalesced_ring_seen: int | None = None  # ring index up to which entries were recorded
    xsave2_size: int = 0
    vcpu_count: int = 0  # VM only: vCPUs created, for naming
    # VM only: the address space (the recorder's per-process RunMappings) that created it. KVM
    # refuses vCPU ioctls from any other (EIO), a refusal its KVM_RUN tracepoint never sees.
    created_in: object | None = None


@dataclass(slots=True)
class _FdEntry:
    target: KvmObject
    close_on_exec: bool


class RoleNames:
    """Hands out trace-wide unique role names (one instance per trace)."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._vm_count = 0

    def _next(self, stem: str) -> int:
        count = self._counts.get(stem, 0)
        self._counts[stem] = count + 1
        return count

    def kvm(self) -> KvmObject:
        count = self._next("kvm")
        return KvmObject("kvm" if count == 0 else f"kvm{count + 1}", "kvm")

    def vm(self) -> KvmObject:
        count = self._next("vm")
        return KvmObject("vm" if count == 0 else f"vm{count + 1}", "vm")

    def vcpu(self, vm: KvmObject | None, vcpu_id: int) -> KvmObject:
        prefix = "" if vm is None or vm.role == "vm" else f"{vm.role}."
        if vm is not None:
            vm.vcpu_count += 1
        return KvmObject(f"{prefix}vcpu{vcpu_id}", "vcpu", vm=vm)

    def numbered(self, kind: str, vm: KvmObject | None = None) -> KvmObject:
        """device0, stats0, eventfd0...: kinds named by a trace-wide counter."""
        return KvmObject(f"{kind}{self._next(kind)}", kind, vm=vm)


class FdTable:
    """fd -> KvmObject for one `files_struct` (shared by the threads that share it)."""

    def __init__(self, entries: dict[int, _FdEntry] | None = None) -> None:
        self._entries: dict[int, _FdEntry] = entries or {}

    def get(self, fd: int) -> KvmObject | None:
        entry = self._entries.get(fd)
        return entry.target if entry is not None else None

    def add(self, fd: int, target: KvmObject, *, close_on_exec: bool) -> None:
        """A new fd (which replaces whatever the number named before, as dup2 does)."""
        self._entries[fd] = _FdEntry(target, close_on_exec)

    def duplicate(self, old_fd: int, new_fd: int, *, close_on_exec: bool) -> KvmObject | None:
        """new_fd now names old_fd's object; returns it, or None when old_fd is not KVM's."""
        target = self.get(old_fd)
        if target is None:
            self._entries.pop(new_fd, None)  # dup2 over a KVM fd closes it
            return None
        if new_fd != old_fd:  # dup2(fd, fd) is a no-op that keeps the fd's flags
            self.add(new_fd, target, close_on_exec=close_on_exec)
        return target

    def close(self, fd: int) -> KvmObject | None:
        entry = self._entries.pop(fd, None)
        return entry.target if entry is not None else None

    def set_close_on_exec(self, fd: int, close_on_exec: bool) -> None:
        entry = self._entries.get(fd)
        if entry is not None:
            entry.close_on_exec = close_on_exec

    def references(self, target: KvmObject) -> bool:
        """Whether any fd still names `target` (after a close: is the object still open?)."""
        return any(entry.target is target for entry in self._entries.values())

    def has_kvm_objects(self) -> bool:
        return bool(self._entries)

    def objects(self) -> list[KvmObject]:
        return [entry.target for entry in self._entries.values()]

    def after_exec(self) -> None:
        """exec closes every close-on-exec fd; the others survive with their roles."""
        self._entries = {fd: e for fd, e in self._entries.items() if not e.close_on_exec}

    def copy(self) -> FdTable:
        """fork without CLONE_FILES: the child starts with the same fds, then diverges."""
        return FdTable({fd: _FdEntry(e.target, e.close_on_exec) for fd, e in self._entries.items()})


# What /proc/PID/fd/N reads for KVM's files (anon_inode names from virt/kvm/kvm_main.c:
# "kvm-vm", "kvm-vcpu:%d", "kvm-vm-stats"/"kvm-vcpu-stats", device ops' names like "kvm-vfio").
_DEVICE_NODE = "/dev/kvm"
_ANON_INODE = "anon_inode:"


def kvm_fd_link(pid: int, fd: int) -> str | None:
    """The /proc link text of a process's fd, or None when it has gone."""
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}")
    except FileNotFoundError:
        return None


def is_kvm_device_node(link: str | None) -> bool:
    return link == _DEVICE_NODE


def adopt_open_fds(pid: int, table: FdTable, names: RoleNames) -> None:
    """Fill `table` from an already running process (attach): its KVM fds as /proc shows them.

    Close-on-exec flags come from /proc/PID/fdinfo. A vCPU's VM cannot be told from /proc, so
    vCPUs adopted here are tied to the first VM found.
    """
    fd_directory = f"/proc/{pid}/fd"
    vm: KvmObject | None = None
    for name in sorted(os.listdir(fd_directory), key=int):
        fd = int(name)
        link = kvm_fd_link(pid, fd)
        if link is None:
            continue
        target: KvmObject | None = None
        if is_kvm_device_node(link):
            target = names.kvm()
        elif link == f"{_ANON_INODE}kvm-vm":
            target = vm = names.vm()
        elif link.startswith(f"{_ANON_INODE}kvm-vcpu:"):
            target = names.vcpu(vm, int(link.rpartition(":")[2]))
        elif link.startswith(_ANON_INODE) and link.endswith("-stats"):
            target = names.numbered("stats", vm)
        elif link.startswith(f"{_ANON_INODE}kvm-"):
            target = names.numbered("device", vm)
        elif link == f"{_ANON_INODE}[eventfd]":
            target = names.numbered("eventfd")
        if target is not None:
            table.add(fd, target, close_on_exec=_close_on_exec(pid, fd))


def _close_on_exec(pid: int, fd: int) -> bool:
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}", encoding="ascii") as info:
            for line in info:
                if line.startswith("flags:"):
                    return bool(int(line.split()[1], 8) & os.O_CLOEXEC)
    except FileNotFoundError:
        pass
    return False
