"""A running process's KVM fds as /proc shows them: what `attach` starts from.

Roles are given by the one namer every source uses (model/fd_roles.py); a vCPU's VM cannot be
told from /proc, so vCPUs adopted here are tied to the first VM found.
"""

from __future__ import annotations

import os

from conformance.model.fd_roles import FdTable, KvmObject, RoleNames

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
            vm.memory_digested = True  # it may have run before we came: no first KVM_RUN to see
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
