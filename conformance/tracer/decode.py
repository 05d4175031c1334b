"""Read a KVM ioctl's argument from the tracee: inputs at syscall entry, outputs at syscall exit.

Driven by the ABI table (conformance/abi/ioctls.py) alone: its effective direction says what
the kernel reads (WRITE, READ_WRITE: decoded at entry) and writes (READ, READ_WRITE: decoded at
exit, failures included, since e.g. KVM_GET_MSR_INDEX_LIST writes the needed count back before
failing with E2BIG). INTEGER and NONE arguments are not pointers; the event's `arg` holds them.
A pointer to a bare scalar (KVM_SET_IDENTITY_MAP_ADDR's __u64) decodes as {"value": n}.

A fixed-size struct costs one process_vm_readv. A VARIABLE one costs two: its header, then
its entries with the real count:
- counted entries (nmsrs, nent, nr, n, nevents) read at entry only for ioctls whose kernel
  reads them (all WRITE ones, and KVM_GET_MSRS, which reads each entry's index); at exit the
  count is the one in the header as the kernel left it, and entries are read only on success
  (on failure the kernel has not written them);
- byte-counted tails: kvm_signal_mask.len bytes; kvm_nested_state.size is the whole buffer's
  size, header included;
- KVM_GET_XSAVE2 / KVM_SET_XSAVE: the tail's size is KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) on
  the VM, which the recorder remembers on the VM object;
- out-of-line bitmaps: KVM_CLEAR_DIRTY_LOG's num_pages bits are read at entry; KVM_GET_DIRTY_LOG's
  bitmap is read at exit when the slot's size is known from its KVM_SET_USER_MEMORY_REGION.
  Other pointers inside structs (kvm_irqfd has none; kvm_device_attr.addr, kvm_one_reg.addr,
  kvm_msr_filter ranges' bitmaps) are recorded as the integers they are, not followed.

A count beyond what the kernel accepts (the ABI table's `max_count`: nmsrs = 0xffffffff, nent
above KVM_MAX_CPUID_ENTRIES) reads no entries: the kernel refuses such a call before reading
them. The nested state's size is cut to the most the kernel reads instead (it reads no more).

Bad pointers: the tracee may pass anything (NULL, unmapped or PROT_NONE memory, a struct that
runs into such a page). What could be read is decoded (the fields, and the entries, that lie
whole within it) and `readable` says how many bytes that was; the kernel answers such a call
with EFAULT, and the tracer never fails on it.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from conformance.abi.ioctls import ArgKind, Direction, IoctlSpec
from conformance.model.events import Fields, FieldValue
from conformance.model.fd_roles import KvmObject
from conformance.tracer import fields as layout
from conformance.tracer.stops import SyscallStop

_KERNEL_READS = (Direction.WRITE, Direction.READ_WRITE)
_KERNEL_WRITES = (Direction.READ, Direction.READ_WRITE)
# READ_WRITE variable ioctls whose entries the kernel reads (the others only fill them).
# Source: msr_io() in arch/x86/kvm/x86.c copies the whole entries array in for GET_MSRS.
_ENTRIES_READ_ON_READ_WRITE = frozenset({"KVM_GET_MSRS"})
_BYTE_COUNTED = frozenset({"KVM_SET_SIGNAL_MASK"})
_WHOLE_SIZE_COUNTED = frozenset({"KVM_GET_NESTED_STATE", "KVM_SET_NESTED_STATE"})
_XSAVE_TAILS = frozenset({"KVM_GET_XSAVE2", "KVM_SET_XSAVE"})
_DIRTY_BITMAP_FIELD = "dirty_bitmap"
SCALAR_FIELD = "value"  # the one field of an argument that points to a bare __u64
_PAGE_SIZE = 4096  # x86 guest pages: dirty bitmaps have one bit per 4 KiB page
_BITS_PER_LONG = 64
# What the tracer reads of a tail the ABI table sets no limit for (an XSAVE area, a dirty
# bitmap): a bound of its own, so that a garbage count never makes it read gigabytes.
_MAX_TAIL_BYTES = 16 << 20


@dataclass(frozen=True, slots=True)
class ArgumentRead:
    """What the tracer read of an ioctl's argument."""

    fields: Fields | None  # None: nothing to decode (or nothing readable)
    readable: int | None = None  # bytes readable before the first that was not; None: all


_NOTHING = ArgumentRead(None)


@dataclass(frozen=True, slots=True)
class _Tail:
    """Where a variable struct's entries are and how many there are."""

    offset: int  # from the argument's address (for out-of-line bitmaps: absolute address)
    item_type: layout.CType
    count: int
    out_of_line: bool = False


def decodes_pointer(spec: IoctlSpec) -> bool:
    """Whether the ioctl's argument points at memory the kernel reads or writes."""
    return spec.arg_kind not in (ArgKind.INTEGER, ArgKind.NONE)


def read_inputs(
    spec: IoctlSpec, stop: SyscallStop, address: int, vm: KvmObject | None
) -> ArgumentRead:
    """What the kernel reads from the argument, at syscall entry."""
    if not decodes_pointer(spec) or spec.direction not in _KERNEL_READS:
        return _NOTHING
    reads_entries = spec.direction is Direction.WRITE or spec.name in _ENTRIES_READ_ON_READ_WRITE
    return _read(spec, stop, address, vm, with_entries=reads_entries)


def read_outputs(
    spec: IoctlSpec, stop: SyscallStop, address: int, vm: KvmObject | None, *, failed: bool
) -> ArgumentRead:
    """What the kernel wrote to the argument, at syscall exit; after a failure, no entries (the
    header may hold the count the kernel needs: E2BIG)."""
    if not decodes_pointer(spec) or spec.direction not in _KERNEL_WRITES:
        return _NOTHING
    return _read(spec, stop, address, vm, with_entries=not failed)


def _read(
    spec: IoctlSpec, stop: SyscallStop, address: int, vm: KvmObject | None, *, with_entries: bool
) -> ArgumentRead:
    struct_type = spec.struct
    if struct_type is None:  # a pointer to a scalar (__u64 for KVM_X86_SETUP_MCE...)
        raw = stop.read_prefix(address, spec.size)
        if len(raw) < spec.size:
            return ArgumentRead(None, len(raw))
        return ArgumentRead({SCALAR_FIELD: int.from_bytes(raw, "little")})
    size = ctypes.sizeof(struct_type)
    raw = stop.read_prefix(address, size)
    if len(raw) < size:
        return ArgumentRead(_whole_fields(struct_type, raw), len(raw))
    header = layout.decode(struct_type, raw)
    if spec.arg_kind is ArgKind.VARIABLE and with_entries and spec.entries_field is not None:
        tail = _tail(spec, struct_type, header, vm)
        if tail is not None:
            entries, readable = _read_tail(stop, address, tail)
            if entries is not None:
                header[spec.entries_field] = entries
            if readable is not None:
                return ArgumentRead(header, readable)
    return ArgumentRead(header)


def _whole_fields(
    struct_type: type[ctypes.Structure] | type[ctypes.Union], raw: bytes
) -> Fields | None:
    """The fields of a struct that lie whole within its first len(raw) bytes."""
    if not raw:
        return None
    decoded = layout.decode(struct_type, raw.ljust(ctypes.sizeof(struct_type), b"\0"))
    whole: Fields = {}
    for name, value in decoded.items():
        field = getattr(struct_type, name, None)
        if field is not None and field.offset + field.size <= len(raw):
            whole[name] = value
    return whole or None


def _read_tail(
    stop: SyscallStop, address: int, tail: _Tail
) -> tuple[FieldValue | None, int | None]:
    """The entries (those read whole when not all were readable) and, when not all were, how
    many bytes of the argument could be read. An out-of-line bitmap that is not all readable is
    left out: its pointer stays in the header, as the integer it is."""
    item_size = ctypes.sizeof(tail.item_type)
    size = item_size * tail.count
    if size == 0:
        return layout.decode_array(tail.item_type, b"", 0), None
    start = tail.offset if tail.out_of_line else address + tail.offset
    raw = stop.read_prefix(start, size)
    if len(raw) == size:
        return layout.decode_array(tail.item_type, raw, tail.count), None
    if tail.out_of_line:
        return None, None
    count = len(raw) // item_size
    return layout.decode_array(tail.item_type, raw[: count * item_size], count), (
        tail.offset + len(raw)
    )


def _tail(
    spec: IoctlSpec,
    struct_type: type[ctypes.Structure] | type[ctypes.Union],
    header: Fields,
    vm: KvmObject | None,
) -> _Tail | None:
    entries = spec.entries_field
    assert entries is not None  # VARIABLE specs always name their entries
    if entries == _DIRTY_BITMAP_FIELD:
        return _dirty_bitmap(header, vm)
    offset = getattr(struct_type, entries).offset
    if spec.name in _XSAVE_TAILS:
        extra = (vm.xsave2_size if vm is not None else 0) - ctypes.sizeof(struct_type)
        return _Tail(offset, ctypes.c_uint8, extra) if 0 < extra <= _MAX_TAIL_BYTES else None
    count = header.get(spec.count_field or "")
    if not isinstance(count, int):
        return None
    if spec.name in _WHOLE_SIZE_COUNTED:
        # The kernel reads (or writes) no more than its own state's size, whatever the VMM's.
        count = min(count, spec.max_count or count) - offset
        item_type: layout.CType = ctypes.c_uint8
    else:
        if spec.max_count is not None and count > spec.max_count:
            return None  # refused by the kernel before it reads an entry
        item_type = (
            ctypes.c_uint8
            if spec.name in _BYTE_COUNTED
            else layout.element_type(struct_type, entries)
        )
    if not 0 <= count * ctypes.sizeof(item_type) <= _MAX_TAIL_BYTES:
        return None
    return _Tail(offset, item_type, count)


def _dirty_bitmap(header: Fields, vm: KvmObject | None) -> _Tail | None:
    """KVM_CLEAR_DIRTY_LOG: num_pages bits; KVM_GET_DIRTY_LOG: one bit per page of the slot."""
    pointer = header.get(_DIRTY_BITMAP_FIELD)
    pages = header.get("num_pages")
    if pages is None and vm is not None:
        slot = header.get("slot")
        size = vm.slot_sizes.get(slot) if isinstance(slot, int) else None
        pages = size // _PAGE_SIZE if size is not None else None
    if not isinstance(pointer, int) or not isinstance(pages, int) or pointer == 0:
        return None
    longs = -(-pages // _BITS_PER_LONG)
    if longs * 8 > _MAX_TAIL_BYTES:
        return None
    return _Tail(pointer, ctypes.c_uint8, longs * 8, out_of_line=True)
