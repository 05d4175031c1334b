"""Read a vCPU's mmapped `struct kvm_run` around KVM_RUN: the exit at syscall exit, and what the
VMM answered (IO-in data, MMIO-read data, RDMSR value...) at the next syscall entry.

The kvm_run page is found through the mmap of the vCPU fd (offset 0), recorded per address
space in `RunMappings`. At each KVM_RUN exit one process_vm_readv reads the header and the exit
union (288 bytes), plus, in the same call, the IO data where this vCPU's last IO exit had it
(data_offset is KVM_PIO_PAGE_OFFSET pages on x86 and does not change) and the coalesced MMIO
ring's indices when the VM registered a zone. A second read happens only when that guess was
short, and for ring entries.

Payloads: every x86 exit reason's union member is decoded with the generated layout, cut to
its real length (io data: size x count bytes at data_offset; mmio data: len bytes; both only
for writes, a read's data being the answer recorded in the next KVM_RUN's run_entry; internal
error and system event data: ndata words; an emulation failure with instruction bytes decodes
as `emulation_failure`). Reasons without payload (HLT, SHUTDOWN, IRQ_WINDOW_OPEN, INTR, NMI...)
record the reason only; a reason the headers do not know keeps the union's raw bytes. The
header's status fields (ready_for_interrupt_injection, if_flag, cr8, apic_base) describe the
vCPU, not the exit, and are left out so that identical exits compare equal; `flags` is kept
when set (KVM_RUN_X86_SMM, KVM_RUN_X86_BUS_LOCK).
"""

from __future__ import annotations

import ctypes
import errno as errno_codes
import struct
from dataclasses import dataclass, field
from typing import Any

from conformance.abi import _generated as abi
from conformance.model.events import Fields, FieldValue
from conformance.model.fd_roles import FdTable, KvmObject
from conformance.tracer import fields as layout
from conformance.tracer.errors import MemoryReadError
from conformance.tracer.stops import SyscallStop

PAGE_SIZE = 4096
_RING_PAGE_OFFSET = abi.KVM_COALESCED_MMIO_PAGE_OFFSET * PAGE_SIZE
_UNION_OFFSET: int = abi.kvm_run._anon0.offset
_UNION_SIZE: int = abi.kvm_run._anon0.size
HEADER_SIZE = _UNION_OFFSET + _UNION_SIZE  # kvm_run up to the end of its exit union
# exit_reason u32, (ready_for_interrupt_injection u8, if_flag u8), flags u16
_STATUS = struct.Struct("<8xI2xH")
_CONTROL = struct.Struct("<BB")  # request_interrupt_window, immediate_exit
_RING_INDICES = struct.Struct("<II")  # first, last
_RING_ENTRY_SIZE = ctypes.sizeof(abi.kvm_coalesced_mmio)
_RING_CAPACITY = (PAGE_SIZE - ctypes.sizeof(abi.kvm_coalesced_mmio_ring)) // _RING_ENTRY_SIZE
PIO_GUESS = 16  # bytes of IO data read speculatively with the header: covers non-string IO

_UNION_MEMBERS: dict[str, type[Any]] = {name: kind for name, kind, *_ in abi.kvm_run_anon0._fields_}


def _reason_members() -> dict[int, str]:
    names = {
        "KVM_EXIT_UNKNOWN": "hw",
        "KVM_EXIT_EXCEPTION": "ex",
        "KVM_EXIT_IO": "io",
        "KVM_EXIT_HYPERCALL": "hypercall",
        "KVM_EXIT_DEBUG": "debug",
        "KVM_EXIT_MMIO": "mmio",
        "KVM_EXIT_FAIL_ENTRY": "fail_entry",
        "KVM_EXIT_INTERNAL_ERROR": "internal",
        "KVM_EXIT_SYSTEM_EVENT": "system_event",
        "KVM_EXIT_TPR_ACCESS": "tpr_access",
        "KVM_EXIT_IOAPIC_EOI": "eoi",
        "KVM_EXIT_HYPERV": "hyperv",
        "KVM_EXIT_X86_RDMSR": "msr",
        "KVM_EXIT_X86_WRMSR": "msr",
        "KVM_EXIT_XEN": "xen",
        "KVM_EXIT_NOTIFY": "notify",
        "KVM_EXIT_S390_SIEIC": "s390_sieic",
        "KVM_EXIT_S390_RESET": "s390_reset_flags",
        "KVM_EXIT_S390_UCONTROL": "s390_ucontrol",
        "KVM_EXIT_DCR": "dcr",
        "KVM_EXIT_OSI": "osi",
        "KVM_EXIT_PAPR_HCALL": "papr_hcall",
        "KVM_EXIT_S390_TSCH": "s390_tsch",
        "KVM_EXIT_EPR": "epr",
        "KVM_EXIT_S390_STSI": "s390_stsi",
        "KVM_EXIT_ARM_NISV": "arm_nisv",
        "KVM_EXIT_RISCV_SBI": "riscv_sbi",
        "KVM_EXIT_RISCV_CSR": "riscv_csr",
    }
    return {getattr(abi, name): member for name, member in names.items() if hasattr(abi, name)}


_PAYLOAD_MEMBER = _reason_members()
_KNOWN_REASONS = frozenset(
    value
    for name, value in vars(abi).items()
    if name.startswith("KVM_EXIT_")
    and isinstance(value, int)
    and not name.startswith(("KVM_EXIT_IO_", "KVM_EXIT_HYPERV_", "KVM_EXIT_XEN_"))
)
_MMIO_DATA_OFFSET = _UNION_OFFSET + abi.kvm_run_anon0_mmio.data.offset
_MSR_ERROR_OFFSET = _UNION_OFFSET + abi.kvm_run_anon0_msr.error.offset
_MSR_DATA_OFFSET = _UNION_OFFSET + abi.kvm_run_anon0_msr.data.offset
_HYPERCALL_RET_OFFSET = _UNION_OFFSET + abi.kvm_run_anon0_hypercall.ret.offset


@dataclass(slots=True)
class _VcpuMapping:
    run_address: int | None = None
    ring_address: int | None = None


@dataclass(slots=True)
class RunMappings:
    """Where each vCPU's kvm_run (and coalesced MMIO ring) is mapped in one address space."""

    by_vcpu: dict[KvmObject, _VcpuMapping] = field(default_factory=dict)

    def mapped(self, vcpu: KvmObject, address: int, length: int, offset: int) -> None:
        mapping = self.by_vcpu.setdefault(vcpu, _VcpuMapping())
        if offset == 0:
            mapping.run_address = address
        if offset <= _RING_PAGE_OFFSET < offset + length:
            mapping.ring_address = address + _RING_PAGE_OFFSET - offset

    def unmapped(self, address: int, length: int) -> None:
        end = address + length
        for mapping in self.by_vcpu.values():
            if mapping.run_address is not None and address <= mapping.run_address < end:
                mapping.run_address = None
            if mapping.ring_address is not None and address <= mapping.ring_address < end:
                mapping.ring_address = None

    def copy(self) -> RunMappings:
        return RunMappings(
            {vcpu: _VcpuMapping(m.run_address, m.ring_address) for vcpu, m in self.by_vcpu.items()}
        )


@dataclass(frozen=True, slots=True)
class _Answer:
    """What the VMM must write into kvm_run before the next KVM_RUN: member, offset, size."""

    member: str
    reads: tuple[tuple[str, int, int], ...]  # (field name, offset in kvm_run, size)


class RunReader:
    """Decodes kvm_run at KVM_RUN exits and entries; keeps one pending answer per vCPU."""

    def __init__(self) -> None:
        self._awaiting: dict[KvmObject, _Answer] = {}
        self._io_data_offset: dict[KvmObject, int] = {}

    def forget(self, vcpu: KvmObject) -> None:
        self._awaiting.pop(vcpu, None)
        self._io_data_offset.pop(vcpu, None)

    def read_entry(
        self, stop: SyscallStop, vcpu: KvmObject, mappings: RunMappings
    ) -> Fields | None:
        """At KVM_RUN entry: kvm_run's control bytes (request_interrupt_window, immediate_exit)
        when either is set, and with them the answer to the previous exit when it asked for one.
        The answer stays expected until a call reaches the guest: one that fails before it
        (immediate_exit) leaves it for the next."""
        answer = self._awaiting.get(vcpu)
        mapping = mappings.by_vcpu.get(vcpu)
        if mapping is None or mapping.run_address is None:
            return None
        base = mapping.run_address
        reads = answer.reads if answer is not None else ()
        try:
            pieces = stop.read_many(
                [(base, _CONTROL.size), *((base + offset, size) for _, offset, size in reads)]
            )
        except MemoryReadError:
            return None  # kvm_run unmapped behind the tracer's back: the kernel will say
        request_window, immediate_exit = _CONTROL.unpack(pieces[0])
        if answer is None:
            if not request_window and not immediate_exit:
                return None
            return {"request_interrupt_window": request_window, "immediate_exit": immediate_exit}
        values: Fields = {}
        for (name, _, _), raw in zip(answer.reads, pieces[1:], strict=True):
            values[name] = (
                raw
                if name == "data" and answer.member in ("io", "mmio")
                else (int.from_bytes(raw, "little"))
            )
        return {
            "request_interrupt_window": request_window,
            "immediate_exit": immediate_exit,
            answer.member: values,
        }

    def read_exit(
        self,
        stop: SyscallStop,
        vcpu: KvmObject,
        mappings: RunMappings,
        *,
        errno: int | None,
        immediate_exit: bool,
    ) -> Fields | None:
        """At KVM_RUN exit: exit_reason (and flags when set) and the reason's payload; None
        when the call did not reach the guest, kvm_run then holding the previous exit.

        A call that failed reached the guest only when the kernel says so: EINTR with
        KVM_EXIT_INTR, which vcpu_run() sets when a signal ends a run. immediate_exit makes
        kvm_arch_vcpu_ioctl_run() return EINTR before entering and before exit_reason is set;
        every other failure (EINVAL, EFAULT, EIO...) comes before the guest too.
        """
        if errno is not None and (errno != errno_codes.EINTR or immediate_exit):
            return None
        mapping = mappings.by_vcpu.get(vcpu)
        if mapping is None or mapping.run_address is None:
            return None
        try:
            return self._read_exit(stop, vcpu, mapping, mapping.run_address, errno is not None)
        except MemoryReadError:
            return None

    def _read_exit(
        self,
        stop: SyscallStop,
        vcpu: KvmObject,
        mapping: _VcpuMapping,
        base: int,
        interrupted: bool,
    ) -> Fields | None:
        ranges = [(base, HEADER_SIZE)]
        io_offset = self._io_data_offset.get(vcpu)
        if io_offset is not None:
            ranges.append((base + io_offset, PIO_GUESS))
        vm = vcpu.vm
        ring = mapping.ring_address if vm is not None and vm.coalesced_mmio else None
        if ring is not None:
            ranges.append((ring, _RING_INDICES.size))
        pieces = stop.read_many(ranges)
        if interrupted and _STATUS.unpack_from(pieces[0])[0] != abi.KVM_EXIT_INTR:
            return None  # EINTR without KVM_EXIT_INTR: the exit there is an earlier call's
        self._awaiting.pop(vcpu, None)  # the guest ran: the kernel took the answer
        io_guess = pieces[1] if io_offset is not None else None
        exit_fields = self._decode_exit(stop, vcpu, base, pieces[0], io_guess)
        if ring is not None and vm is not None:
            exit_fields["coalesced_mmio"] = _new_ring_entries(stop, vm, ring, pieces[-1])
        return exit_fields

    def _decode_exit(
        self, stop: SyscallStop, vcpu: KvmObject, base: int, header: bytes, io_guess: bytes | None
    ) -> Fields:
        reason, flags = _STATUS.unpack_from(header)
        fields: Fields = {"exit_reason": reason}
        if flags:  # KVM_RUN_X86_SMM, KVM_RUN_X86_BUS_LOCK: rare, and part of the exit when set
            fields["flags"] = flags
        member = _PAYLOAD_MEMBER.get(reason)
        union = header[_UNION_OFFSET:HEADER_SIZE]
        if member is None:
            if reason not in _KNOWN_REASONS:
                fields["raw"] = union
            return fields
        if member == "internal":
            member = _internal_member(union)
        payload = _payload(member, union)
        fields[member] = payload
        if member == "io":
            assert isinstance(payload, dict)
            if payload["direction"] == abi.KVM_EXIT_IO_OUT:  # an IN's data is the answer
                payload["data"] = self._io_data(stop, vcpu, base, payload, io_guess)
        self._expect_answer(vcpu, member, payload)
        return fields

    def _io_data(
        self, stop: SyscallStop, vcpu: KvmObject, base: int, io: Fields, guess: bytes | None
    ) -> bytes:
        offset, size, count = io["data_offset"], io["size"], io["count"]
        assert isinstance(offset, int) and isinstance(size, int) and isinstance(count, int)
        length = size * count
        if guess is not None and self._io_data_offset.get(vcpu) == offset and length <= len(guess):
            return guess[:length]
        self._io_data_offset[vcpu] = offset
        return stop.read(base + offset, length) if length else b""

    def _expect_answer(self, vcpu: KvmObject, member: str, payload: FieldValue) -> None:
        assert isinstance(payload, dict)
        answer: _Answer | None = None
        if member == "io" and payload["direction"] == abi.KVM_EXIT_IO_IN:
            offset, size, count = payload["data_offset"], payload["size"], payload["count"]
            assert isinstance(offset, int) and isinstance(size, int) and isinstance(count, int)
            answer = _Answer("io", (("data", offset, size * count),))
        elif member == "mmio" and not payload["is_write"]:
            length = payload["len"]
            assert isinstance(length, int)
            answer = _Answer("mmio", (("data", _MMIO_DATA_OFFSET, min(length, 8)),))
        elif member == "msr":
            answer = _Answer(
                "msr", (("error", _MSR_ERROR_OFFSET, 1), ("data", _MSR_DATA_OFFSET, 8))
            )
        elif member == "hypercall":
            answer = _Answer("hypercall", (("ret", _HYPERCALL_RET_OFFSET, 8),))
        if answer is not None:
            self._awaiting[vcpu] = answer


def _internal_member(union: bytes) -> str:
    suberror, _ndata, flags = struct.unpack_from("<IIQ", union)
    emulation = suberror == abi.KVM_INTERNAL_ERROR_EMULATION
    with_bytes = flags & abi.KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES
    return "emulation_failure" if emulation and with_bytes else "internal"


def _payload(member: str, union: bytes) -> FieldValue:
    member_type = _UNION_MEMBERS[member]
    if not issubclass(member_type, ctypes.Structure):  # s390_reset_flags: a bare __u64
        return int.from_bytes(union[: ctypes.sizeof(member_type)], "little")
    payload = layout.decode(member_type, union)
    if member == "mmio" and not payload["is_write"]:
        del payload["data"]  # a read's data is the VMM's answer, read at the next entry
    elif member == "mmio":
        payload["data"] = union[_MMIO_DATA_OFFSET - _UNION_OFFSET :][: min(_int(payload["len"]), 8)]
    elif member in ("internal", "system_event"):
        ndata = min(_int(payload["ndata"]), 16)
        data = payload.get("data")
        if isinstance(data, list):
            payload["data"] = data[:ndata]
    return payload


def _int(value: FieldValue) -> int:
    assert isinstance(value, int)
    return value


def _new_ring_entries(stop: SyscallStop, vm: KvmObject, ring: int, indices: bytes) -> FieldValue:
    """Ring entries appended since the last look (the ring is the VM's, shared by its vCPUs)."""
    first, last = _RING_INDICES.unpack(indices)
    start = first if vm.coalesced_ring_seen is None else vm.coalesced_ring_seen
    vm.coalesced_ring_seen = last % _RING_CAPACITY
    if start >= _RING_CAPACITY or last >= _RING_CAPACITY or start == last:
        return []
    spans = [(start, last)] if start < last else [(start, _RING_CAPACITY), (0, last)]
    entries_base = ring + ctypes.sizeof(abi.kvm_coalesced_mmio_ring)
    pieces = stop.read_many(
        [
            (entries_base + a * _RING_ENTRY_SIZE, (b - a) * _RING_ENTRY_SIZE)
            for a, b in spans
            if b > a
        ]
    )
    entries: list[FieldValue] = []
    for raw in pieces:
        for index in range(len(raw) // _RING_ENTRY_SIZE):
            entry = layout.decode(abi.kvm_coalesced_mmio, raw[index * _RING_ENTRY_SIZE :])
            entry["data"] = _bytes(entry["data"])[: min(_int(entry["len"]), 8)]
            entries.append(entry)
    return entries


def _bytes(value: FieldValue) -> bytes:
    assert isinstance(value, bytes)
    return value


def adopt_run_mappings(pid: int, fds: FdTable, mappings: RunMappings) -> None:
    """Attach: find the vCPUs' kvm_run mappings in /proc/PID/maps ("anon_inode:kvm-vcpu:N")."""
    vcpus = {vcpu.role: vcpu for vcpu in fds.objects() if vcpu.kind == "vcpu"}
    with open(f"/proc/{pid}/maps", encoding="ascii", errors="replace") as maps:
        for line in maps:
            parts = line.split()
            if len(parts) < 6 or not parts[5].startswith("anon_inode:kvm-vcpu:"):
                continue
            vcpu_id = parts[5].rpartition(":")[2]
            vcpu = next((v for role, v in vcpus.items() if role.endswith(f"vcpu{vcpu_id}")), None)
            if vcpu is not None:
                start, end = (int(bound, 16) for bound in parts[0].split("-"))
                mappings.mapped(vcpu, start, end - start, int(parts[2], 16))
