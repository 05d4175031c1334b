"""Which KVM object each file descriptor names, and the role names every trace source gives them.

One namer for every source of calls: the tracer (tracer/recorder.py) and the strace-log importer
(normalize/strace_import.py) both name fds through `RoleNames` and follow them through an
`FdTable`, so the same VMM gets the same roles however it was captured (a contract test holds
them to it).

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

from dataclasses import dataclass, field

from conformance.model.events import GuestMemoryDigest


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
    # VM only: each live slot's (guest_phys_addr, memory_size, userspace_addr); whether the
    # guest memory was hashed yet (before the guest's first instruction) and the digest, until
    # the VM's first KVM_RUN event takes it (tracer/guest_memory.py).
    slots: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    memory_digested: bool = False
    memory_digest: GuestMemoryDigest | None = None
    # VM only: the address space (the recorder's per-process RunMappings) that created it. KVM
    # refuses vCPU ioctls from any other (EIO), a refusal its KVM_RUN tracepoint never sees.
    created_in: object | None = None


@dataclass(slots=True)
class _FdEntry:
    target: KvmObject
    close_on_exec: bool


@dataclass(frozen=True, slots=True)
class Duplicated:
    """What a dup made: the object the new fd names (None: not a KVM fd), and the KVM object
    the new fd number named before, which the dup closed (None: nothing of KVM's)."""

    target: KvmObject | None
    closed: KvmObject | None


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

    def created(self, kind: str, vm: KvmObject | None, argument: int) -> KvmObject:
        """The object a creating ioctl made, by the ABI table's `creates` kind: a VM, a vCPU
        of `vm` with the id `argument` passed to KVM_CREATE_VCPU, or a device or stats fd."""
        if kind == "vm":
            return self.vm()
        if kind == "vcpu":
            return self.vcpu(vm, argument & 0xFFFFFFFF)  # the kernel reads an unsigned long
        return self.numbered(kind, vm)

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

    def duplicate(self, old_fd: int, new_fd: int, *, close_on_exec: bool) -> Duplicated:
        """new_fd now names old_fd's object (dup, dup2, dup3, F_DUPFD): what it names now,
        and the object it named before if the call closed it (dup2 over another KVM fd)."""
        target = self.get(old_fd)
        replaced = self.get(new_fd) if new_fd != old_fd else None
        if target is None:
            self._entries.pop(new_fd, None)  # dup2 of a non-KVM fd over a KVM fd closes it
        elif new_fd != old_fd:  # dup2(fd, fd) is a no-op that keeps the fd's flags
            self.add(new_fd, target, close_on_exec=close_on_exec)
        return Duplicated(target, replaced if replaced is not target else None)

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


def vm_of(target: KvmObject | None) -> KvmObject | None:
    """The VM an object belongs to (itself for a VM), None for /dev/kvm's fd and eventfds."""
    if target is None:
        return None
    return target if target.kind == "vm" else target.vm
