"""ioctl stops -> `Ioctl` events: which ioctl it is, its decoded argument, the fds it creates.

Which ioctl a request number means comes from the ABI table, asked with the kind of the fd it
was issued on (two ioctls can share a number). A request the table does not know is recorded
raw (`name=None`) with its number; an ioctl on an fd that is not KVM's is not recorded at all,
unless its type byte is KVMIO (an fd the tracer missed, e.g. opened before `attach`).

The kernel state the decoders need is kept on the fd's `KvmObject` as the ioctls go by: each
memory slot's size (dirty bitmaps), whether a coalesced MMIO zone exists (the ring then needs
reading at KVM_RUN exits), KVM_CAP_XSAVE2's answer (the size of kvm_xsave with its tail).
"""

from __future__ import annotations

from dataclasses import dataclass

from conformance.abi import _generated as abi
from conformance.abi import ioc
from conformance.abi.ioctls import FdKind, IoctlSpec, by_name, by_number
from conformance.model.events import Fields, GuestMemoryDigest, Ioctl, KvmRunMode
from conformance.model.fd_roles import FdTable, KvmObject, RoleNames, vm_of
from conformance.tracer import decode, guest_memory
from conformance.tracer.kvm_run import RunMappings, RunReader
from conformance.tracer.stops import SyscallStop
from conformance.tracer.syscall_args import signed_int

_FD_KINDS = {
    "kvm": FdKind.SYSTEM,
    "vm": FdKind.VM,
    "vcpu": FdKind.VCPU,
    "device": FdKind.DEVICE,
}
KVM_RUN = by_name("KVM_RUN").number
_CREATE_DEVICE_TEST = abi.KVM_CREATE_DEVICE_TEST
_CREATED_FDS_ARE_CLOSE_ON_EXEC = True  # kvm_main.c creates every KVM fd with O_CLOEXEC
_UNKNOWN_FD_ROLE = "unknown"
_NOTHING_READ = decode.ArgumentRead(None)


@dataclass(slots=True)
class PendingIoctl:
    """What an ioctl's entry learned, for its exit."""

    fd: int
    target: KvmObject | None
    request: int
    spec: IoctlSpec | None
    arg: int
    inputs: Fields | None
    run_entry: Fields | None
    guest_memory: GuestMemoryDigest | None = None
    readable: int | None = None  # the argument's bytes readable at entry, when not all were


class KvmCallDecoder:
    def __init__(self, names: RoleNames, kvm_run: KvmRunMode) -> None:
        self._names = names
        self._decode_runs = kvm_run == "full"
        self._runs = RunReader()
        self._specs: dict[tuple[int, FdKind | None], IoctlSpec | None] = {}

    def entry(self, stop: SyscallStop, fds: FdTable, mappings: RunMappings) -> PendingIoctl | None:
        """Decode the inputs; None when the ioctl is not KVM's and needs no exit stop."""
        fd, request, arg = signed_int(stop.args[0]), stop.args[1] & 0xFFFFFFFF, stop.args[2]
        target = fds.get(fd)
        if target is None and ioc.decode(request).type != abi.KVMIO:
            return None
        kinds = _FD_KINDS.get(target.kind) if target is not None else None
        spec = self._spec(request, kinds)
        vm = vm_of(target)
        inputs = decode.read_inputs(spec, stop, arg, vm) if spec is not None else _NOTHING_READ
        run_entry = None
        memory = None
        if request == KVM_RUN and self._decode_runs and target is not None:
            run_entry = self._runs.read_entry(stop, target, mappings)
            stop.exit_can_wait = _failure_is_traced(target, arg, mappings)
            stop.run_address = _run_address_for_the_compiled_loop(target, mappings)
            if vm is not None:  # the first: before the guest's first instruction
                memory = guest_memory.for_first_run(stop.tid, vm)
        return PendingIoctl(
            fd, target, request, spec, arg, inputs.fields, run_entry, memory, inputs.readable
        )

    def exit(
        self,
        stop: SyscallStop,
        pending: PendingIoctl,
        fds: FdTable,
        mappings: RunMappings,
        *,
        seq: int,
        ret: int,
        errno: int | None,
    ) -> Ioctl:
        spec, target = pending.spec, pending.target
        vm = vm_of(target)
        read = _NOTHING_READ
        if spec is not None:
            read = decode.read_outputs(spec, stop, pending.arg, vm, failed=errno is not None)
        outputs = read.fields
        new_role = None
        if errno is None and spec is not None:
            new_role = self._created(spec, pending, outputs, ret, fds, mappings=mappings)
            self._remember(spec, pending, target, ret)
        run_exit = None
        if pending.request == KVM_RUN and self._decode_runs and target is not None:
            entry = pending.run_entry or {}
            run_exit = self._runs.read_exit(
                stop,
                target,
                mappings,
                errno=errno,
                immediate_exit=bool(entry.get("immediate_exit")),
            )
        return Ioctl(
            seq=seq,
            tid=stop.tid,
            pid=stop.tgid,
            ret=ret,
            errno=errno,
            fd=pending.fd,
            fd_role=target.role if target is not None else _UNKNOWN_FD_ROLE,
            request=pending.request,
            name=spec.name if spec is not None else None,
            arg=pending.arg,
            inputs=pending.inputs,
            outputs=outputs,
            new_fd_role=new_role,
            run_exit=run_exit,
            run_entry=pending.run_entry,
            repeat=stop.repeat,
            guest_memory=pending.guest_memory,
            readable=pending.readable if pending.readable is not None else read.readable,
        )

    def _spec(self, request: int, kinds: FdKind | None) -> IoctlSpec | None:
        """The table's entry, cached: by_number sorts candidates, once per call was measurable."""
        key = (request, kinds)
        if key in self._specs:
            return self._specs[key]
        spec = by_number(request, kinds)
        if spec is None and kinds is not None:
            spec = by_number(request)  # a known ioctl on a wrong fd kind: the kernel says no
        self._specs[key] = spec
        return spec

    def forget(self, target: KvmObject) -> None:
        """A vCPU's last fd was closed: drop its pending answer."""
        self._runs.forget(target)

    def _created(
        self,
        spec: IoctlSpec,
        pending: PendingIoctl,
        outputs: Fields | None,
        ret: int,
        fds: FdTable,
        *,
        mappings: RunMappings,
    ) -> str | None:
        if spec.creates is None:
            return None
        new_fd = ret
        if spec.creates == "device":
            fd, flags = (outputs or {}).get("fd"), (pending.inputs or {}).get("flags")
            if not isinstance(fd, int) or not isinstance(flags, int) or flags & _CREATE_DEVICE_TEST:
                return None  # KVM_CREATE_DEVICE_TEST only asks whether the type exists
            new_fd = fd
        created = self._names.created(spec.creates, vm_of(pending.target), pending.arg)
        if spec.creates == "vm":
            created.created_in = mappings
        fds.add(new_fd, created, close_on_exec=_CREATED_FDS_ARE_CLOSE_ON_EXEC)
        return created.role

    @staticmethod
    def _remember(
        spec: IoctlSpec, pending: PendingIoctl, target: KvmObject | None, ret: int
    ) -> None:
        vm = vm_of(target)
        if vm is None:
            return
        inputs = pending.inputs or {}
        if spec.name in ("KVM_SET_USER_MEMORY_REGION", "KVM_SET_USER_MEMORY_REGION2"):
            slot, size = inputs.get("slot"), inputs.get("memory_size")
            gpa, host = inputs.get("guest_phys_addr"), inputs.get("userspace_addr")
            if isinstance(slot, int) and isinstance(size, int):
                vm.slot_sizes[slot] = size
                if size == 0:
                    vm.slots.pop(slot, None)
                elif isinstance(gpa, int) and isinstance(host, int):
                    vm.slots[slot] = (gpa, size, host)
        elif spec.name == "KVM_REGISTER_COALESCED_MMIO":
            vm.coalesced_mmio = True
        elif spec.name == "KVM_CHECK_EXTENSION" and pending.arg == abi.KVM_CAP_XSAVE2:
            vm.xsave2_size = ret


def _failure_is_traced(vcpu: KvmObject, arg: int, mappings: RunMappings) -> bool:
    """Whether a failure of this KVM_RUN would reach the kvm_userspace_exit tracepoint.

    kvm_vcpu_ioctl() refuses before it: a vCPU of a VM another address space created (EIO) and,
    for KVM_RUN, any argument but 0 (EINVAL). Those KVM_RUNs get an exit stop of their own.
    """
    vm = vcpu.vm
    return vcpu.kind == "vcpu" and arg == 0 and vm is not None and vm.created_in is mappings


def _run_address_for_the_compiled_loop(vcpu: KvmObject, mappings: RunMappings) -> int | None:
    """Where the vCPU's kvm_run is, if the compiled loop can read all of an exit there: it
    copies kvm_run's header and PIO data, not a coalesced MMIO ring."""
    mapping = mappings.by_vcpu.get(vcpu)
    if mapping is None or vcpu.vm is None or vcpu.vm.coalesced_mmio:
        return None
    return mapping.run_address
