"""The eBPF recorder's two programs, assembled (bpf_asm.py) for the `sys_enter` and `sys_exit`
raw tracepoints; bpf_kvm_run.py loads them, bpf_layout.py has the state and records they write.

What a KVM_RUN needs recorded is what the one-stop loop copies at each KVM_RUN stop: kvm_run's
header (exit reason and union: the previous call's exit, and what the VMM wrote for this one),
its PIO data and, for a VM with a coalesced MMIO zone, the ring page; plus the call's return
value. So, as there:
- at `sys_enter` of a KVM_RUN, the program copies that "snapshot" from the vCPU's kvm_run
  (bpf_probe_read_user: the VMM has just written its answer there) into the task's state; the
  snapshot is the previous call's exit and this call's entry;
- at `sys_exit` it notes the return value (every one: also the refusals KVM makes before its
  own kvm_userspace_exit tracepoint, an argument other than 0 or another address space's vCPU,
  which is why the syscall's tracepoints serve here rather than KVM's).
Both fire for every syscall of every task while attached; a syscall other than ioctl leaves
after three instructions (sys_enter) or one small read (sys_exit).

Consecutive calls with identical snapshots (same fd, all but the last returning 0) stay one
group in the task's state (`count`); a group goes to the ring buffer only when the next call
differs, so a guest that repeats an exit costs no record at all. When a task's next KVM_RUN
uses another kvm_run page than its group's (one thread, two vCPUs), the group goes to the ring
and then the previous call's exit, copied from the previous page, as an EXIT record.

A copy that fails (bpf_probe_read_user cannot fault a page in) is flagged UNREADABLE and
counted; a record the ring has no room for is counted as lost. When the ring is half full at a
KVM_RUN's return, the task is sent SIGSTOP (THROTTLED), which the tracer takes back.

A VM's memory is digested as it was before its guest ran (tracer/guest_memory.py): while it
is not, its vCPUs are registered FIRST_RUN, and a KVM_RUN on one is sent SIGSTOP at its entry.
KVM finds the signal pending before it enters the guest and returns EINTR; the tracer digests
the memory at that stop and rewinds the call so that it runs again (bpf_run_exits.py).
"""

from __future__ import annotations

from conformance.abi import _generated as abi
from conformance.tracer.bpf_asm import R0, R1, R2, R3, R4, R6, R7, R8, R9, R10, Assembler, reg
from conformance.tracer.bpf_layout import (
    CLOSED,
    COPIED,
    COUNTERS_LOST,
    COUNTERS_UNREADABLE,
    EXIT,
    EXIT_REASON,
    FIRST_RUN,
    IN_RUN,
    IO_CAPACITY,
    IO_COUNT,
    IO_DATA_OFFSET,
    IO_SIZE,
    NOT_MERGED,
    O_ARG,
    O_COUNT,
    O_FD,
    O_FLAGS,
    O_HEADER,
    O_IO,
    O_IO_LENGTH,
    O_RET,
    O_RING,
    O_RUN,
    O_SIZE,
    O_TGID,
    O_TID,
    PIO_OFFSET,
    RING,
    RING_OFFSET,
    STATE_SIZE,
    STOP_SIGNAL,
    THROTTLED,
    UNREADABLE,
)  # fmt: skip
from conformance.tracer.kvm_calls import KVM_RUN
from conformance.tracer.kvm_run import HEADER_SIZE, PAGE_SIZE, PIO_GUESS

# Helpers (<linux/bpf.h>, enum bpf_func_id)
_MAP_LOOKUP_ELEM = 1
_GET_NS_CURRENT_PID_TGID = 120
_PROBE_READ_USER = 112
_PROBE_READ_KERNEL = 113
_RINGBUF_OUTPUT = 130
_RINGBUF_QUERY = 134
_SEND_SIGNAL_THREAD = 117
_RB_NO_WAKEUP = 1
_RB_AVAIL_DATA = 0
# struct pt_regs (<asm/ptrace.h>, x86-64): the syscall's number and arguments as saved at entry
_REGS_DX, _REGS_SI, _REGS_DI, _REGS_ORIG_AX = 96, 104, 112, 120
# The raw tracepoints' arguments: sys_enter(struct pt_regs *, long id), sys_exit(regs, long ret)
_ARG_REGS, _ARG_ID_OR_RET = 0, 8

# The entry program's stack: the saved dx, si, di (24 bytes) from here
_STACK_REGS = -72
_STACK_TASK = -80  # struct bpf_pidns_info


def entry_program(maps: dict[str, int], ioctl: int, namespace: tuple[int, int]) -> bytes:
    """At sys_enter: a traced task's KVM_RUN joins its group or starts a new one. `namespace`:
    the (device, inode) of the tracer's PID namespace."""
    asm = Assembler()
    _new_call(asm, maps, ioctl, namespace)
    _copy_previous_exit(asm, maps)
    asm.load(R1, R8, O_FLAGS, 4)
    asm.and_(R1, COPIED)
    asm.jump_if("==", R1, 0, "compare")
    _copy_snapshot(asm, maps, "entry")
    asm.label("compare")
    _join_or_start_group(asm, maps)
    _stop_a_first_run(asm)
    asm.label("out")
    asm.mov(R0, 0)
    asm.exit()
    return asm.assemble()


def _new_call(asm: Assembler, maps: dict[str, int], ioctl: int,
              namespace: tuple[int, int]) -> None:  # fmt: skip
    """A KVM_RUN of a traced task (else to "out"): r9 its state; r8 this CPU's scratch record
    with the call's tid, tgid, fd, argument and, for a registered vCPU, its page and flags."""
    asm.load(R2, R1, _ARG_ID_OR_RET, 8)
    asm.jump_if("!=", R2, ioctl, "out")
    # The arguments dx (arg), si (request), di (fd): 24 bytes of the saved registers.
    asm.load(R3, R1, _ARG_REGS, 8)
    asm.add(R3, _REGS_DX)
    asm.mov(R1, reg(R10))
    asm.add(R1, _STACK_REGS)
    asm.mov(R2, 24)
    asm.call(_PROBE_READ_KERNEL)
    asm.jump_if("!=", R0, 0, "out")
    asm.load(R1, R10, _STACK_REGS + 8, 4)
    asm.jump_if("!=", R1, _u32_as_imm(KVM_RUN), "out", wide=False)
    _current_task(asm, namespace)
    asm.mov(R7, reg(R0))
    asm.store(R10, -4, R0, 4)  # key: tid
    _lookup(asm, maps["tasks"], -4)
    asm.jump_if("==", R0, 0, "out")  # not a traced task
    asm.mov(R9, reg(R0))  # r9: the task's state
    asm.store_imm(R10, -8, 0, 4)
    _lookup(asm, maps["scratch"], -8)
    asm.jump_if("==", R0, 0, "out")
    asm.mov(R8, reg(R0))  # r8: this CPU's scratch record
    # The new call's meta; fd and arg from the saved registers.
    asm.store(R8, O_TID, R7, 4)
    asm.rsh(R7, 32)
    asm.store(R8, O_TGID, R7, 4)
    asm.store(R10, -16, R7, 4)  # vcpus key: tgid, fd
    asm.load(R1, R10, _STACK_REGS + 16, 4)
    asm.store(R8, O_FD, R1, 4)
    asm.store(R10, -12, R1, 4)
    asm.load(R1, R10, _STACK_REGS, 8)
    asm.store(R8, O_ARG, R1, 8)
    asm.store_imm(R8, O_FLAGS, 0, 4)
    asm.store_imm(R8, O_RUN, 0, 8)
    asm.store_imm(R8, O_IO_LENGTH, 0, 4)
    asm.store_imm(R8, O_SIZE, O_HEADER, 4)
    _lookup(asm, maps["vcpus"], -16)
    asm.jump_if("==", R0, 0, "page-known")  # no vCPU we know: nothing to copy
    asm.load(R1, R0, 0, 8)
    asm.store(R8, O_RUN, R1, 8)
    asm.load(R1, R0, 8, 4)  # COPIED (a page is registered), RING, FIRST_RUN
    asm.store(R8, O_FLAGS, R1, 4)
    asm.label("page-known")


def _current_task(asm: Assembler, namespace: tuple[int, int]) -> None:
    """r0 = tid | tgid << 32 of the running task as the tracer's PID namespace numbers it (the
    tracer's tids; the kernel's global ones differ in a container), or to "out" when the task is
    in another namespace (not ours to trace)."""
    device, inode = namespace
    asm.load_imm64(R1, device)
    asm.load_imm64(R2, inode)
    asm.mov(R3, reg(R10))
    asm.add(R3, _STACK_TASK)
    asm.mov(R4, 8)  # struct bpf_pidns_info {u32 pid, tgid}
    asm.call(_GET_NS_CURRENT_PID_TGID)
    asm.jump_if("!=", R0, 0, "out")
    asm.load(R0, R10, _STACK_TASK, 8)


def _lookup(asm: Assembler, map_fd: int, key_offset: int) -> None:
    """r0 = the value under the key at r10 + key_offset, or 0."""
    asm.load_map(R1, map_fd)
    asm.mov(R2, reg(R10))
    asm.add(R2, key_offset)
    asm.call(_MAP_LOOKUP_ELEM)


def _copy_previous_exit(asm: Assembler, maps: dict[str, int]) -> None:
    """r9: the task's state; r8: the new call in the scratch record, its page known."""
    # The previous call's exit is in its own page: when this call uses another one (or none),
    # copy it from there first, as an EXIT record.
    asm.load(R1, R9, O_COUNT, 8)
    asm.jump_if("==", R1, 0, "exit-copied")
    asm.load(R1, R9, O_FLAGS, 4)
    asm.and_(R1, COPIED)
    asm.jump_if("==", R1, 0, "exit-copied")
    asm.load(R1, R9, O_RUN, 8)
    asm.load(R2, R8, O_RUN, 8)
    asm.jump_if("==", R1, reg(R2), "exit-copied")
    # Then the group cannot go on: it goes to the ring first, its last call's exit after it.
    # Save the new call's page and flags on the stack; the scratch holds the EXIT record.
    asm.store(R10, -24, R2, 8)
    _emit(asm, maps, R9, "group-before-exit")
    asm.store_imm(R9, O_COUNT, 0, 8)
    asm.load(R1, R9, O_RUN, 8)
    asm.load(R2, R8, O_FLAGS, 4)
    asm.store(R10, -32, R2, 8)
    asm.store(R8, O_RUN, R1, 8)
    asm.load(R1, R9, O_FLAGS, 4)
    asm.and_(R1, COPIED | RING)
    asm.or_(R1, EXIT)
    asm.store(R8, O_FLAGS, R1, 4)
    _copy_snapshot(asm, maps, "exit")
    _emit(asm, maps, R8, "exit")
    asm.load(R1, R10, -24, 8)
    asm.store(R8, O_RUN, R1, 8)
    asm.load(R1, R10, -32, 8)
    asm.store(R8, O_FLAGS, R1, 4)
    asm.store_imm(R8, O_IO_LENGTH, 0, 4)
    asm.store_imm(R8, O_SIZE, O_HEADER, 4)
    asm.label("exit-copied")


def _join_or_start_group(asm: Assembler, maps: dict[str, int]) -> None:
    """Does the new call (r8) continue the task's group (r9)? Same fd, argument, page and
    bytes, the group open (its calls all returned 0) and without a ring. Ends at "out"."""
    asm.load(R1, R9, O_COUNT, 8)
    asm.jump_if("==", R1, 0, "new-group")
    asm.load(R1, R9, O_FLAGS, 4)
    asm.load(R2, R8, O_FLAGS, 4)
    asm.or_(R1, reg(R2))
    asm.and_(R1, NOT_MERGED)
    asm.jump_if("!=", R1, 0, "new-group")
    for offset, size in ((O_FD, 4), (O_ARG, 8), (O_RUN, 8), (O_IO_LENGTH, 4)):
        asm.load(R1, R9, offset, size)
        asm.load(R2, R8, offset, size)
        asm.jump_if("!=", R1, reg(R2), "new-group")
    # The snapshot's bytes, unrolled 8 at a time (a loop costs the verifier ~25 ms): the header
    # and PIO_GUESS bytes of PIO data; longer PIO data (string IO) is never merged.
    asm.load(R1, R8, O_IO_LENGTH, 4)
    asm.jump_if(">", R1, PIO_GUESS, "new-group")
    for offset in range(O_HEADER, O_IO + PIO_GUESS, 8):
        asm.load(R1, R8, offset, 8)
        asm.load(R2, R9, offset, 8)
        asm.jump_if("!=", R1, reg(R2), "new-group")
    asm.label("same")
    asm.load(R1, R9, O_COUNT, 8)
    asm.add(R1, 1)
    asm.store(R9, O_COUNT, R1, 8)
    asm.load(R1, R9, O_FLAGS, 4)
    asm.or_(R1, IN_RUN)
    asm.store(R9, O_FLAGS, R1, 4)
    asm.jump("out")
    # Another snapshot: the group so far goes to the ring, this call starts the next one.
    asm.label("new-group")
    asm.load(R1, R9, O_COUNT, 8)
    asm.jump_if("==", R1, 0, "start")
    _emit(asm, maps, R9, "group")
    asm.label("start")
    asm.mov(R1, reg(R9))
    asm.load(R2, R8, O_SIZE, 4)
    asm.jump_if(">", R2, STATE_SIZE, "out")
    asm.jump_if("<", R2, O_HEADER, "out")
    asm.mov(R3, reg(R8))
    asm.call(_PROBE_READ_KERNEL)  # a copy from map value to map value
    asm.store_imm(R9, O_COUNT, 1, 8)
    asm.store_imm(R9, O_RET, 0, 8)
    asm.load(R1, R9, O_FLAGS, 4)
    asm.or_(R1, IN_RUN)
    asm.store(R9, O_FLAGS, R1, 4)


def _stop_a_first_run(asm: Assembler) -> None:
    """The call started a group (r9): when it is its VM's first (FIRST_RUN), stop the task
    before the guest runs. KVM sees the signal pending and returns EINTR without entering the
    guest; the tracer digests the memory at the signal-delivery-stop and runs the call again."""
    asm.load(R1, R9, O_FLAGS, 4)
    asm.and_(R1, FIRST_RUN)
    asm.jump_if("==", R1, 0, "out")
    asm.mov(R1, STOP_SIGNAL)
    asm.call(_SEND_SIGNAL_THREAD)


def _copy_snapshot(asm: Assembler, maps: dict[str, int], name: str) -> None:
    """Into the scratch record (r8), from the page at its O_RUN, as its O_FLAGS say: the
    header; the PIO data of an IO exit (at least PIO_GUESS bytes, as the Python reader reads
    them); the ring page. Sets io_length and size; a failed header copy sets UNREADABLE."""
    asm.mov(R1, reg(R8))
    asm.add(R1, O_HEADER)
    asm.mov(R2, HEADER_SIZE)
    asm.load(R3, R8, O_RUN, 8)
    asm.call(_PROBE_READ_USER)
    asm.jump_if("!=", R0, 0, f"{name}-unreadable")
    _pio_length(asm, name)
    asm.mov(R1, reg(R8))
    asm.add(R1, O_IO)
    asm.mov(R2, reg(R6))
    asm.load(R3, R8, O_RUN, 8)
    asm.add(R3, PIO_OFFSET)
    asm.call(_PROBE_READ_USER)
    asm.jump_if("==", R0, 0, f"{name}-io-copied")
    asm.mov(R6, 0)  # a kvm_run mapped without its PIO page: no data, as process_vm_readv
    asm.label(f"{name}-io-copied")
    asm.store(R8, O_IO_LENGTH, R6, 4)
    asm.add(R6, O_IO + 7)
    asm.and_(R6, ~7)
    asm.store(R8, O_SIZE, R6, 4)
    asm.load(R1, R8, O_FLAGS, 4)
    asm.and_(R1, RING)
    asm.jump_if("==", R1, 0, f"{name}-done")
    asm.mov(R1, reg(R8))
    asm.add(R1, O_RING)
    asm.mov(R2, PAGE_SIZE)
    asm.load(R3, R8, O_RUN, 8)
    asm.add(R3, RING_OFFSET)
    asm.call(_PROBE_READ_USER)
    asm.jump_if("!=", R0, 0, f"{name}-unreadable")
    asm.store_imm(R8, O_SIZE, STATE_SIZE, 4)
    asm.jump(f"{name}-done")
    asm.label(f"{name}-unreadable")
    asm.load(R1, R8, O_FLAGS, 4)
    asm.or_(R1, UNREADABLE)
    asm.store(R8, O_FLAGS, R1, 4)
    asm.store_imm(R8, O_SIZE, O_HEADER, 4)
    _count(asm, maps, COUNTERS_UNREADABLE, name)
    asm.label(f"{name}-done")


def _pio_length(asm: Assembler, name: str) -> None:
    """r6 = how many PIO bytes to copy for the header in the scratch record (r8): an IO exit's
    size x count at KVM's PIO page, at least PIO_GUESS (as the Python reader reads them), at
    most a page."""
    asm.mov(R6, PIO_GUESS)
    asm.load(R1, R8, EXIT_REASON, 4)
    asm.jump_if("!=", R1, abi.KVM_EXIT_IO, f"{name}-io")
    asm.load(R1, R8, IO_DATA_OFFSET, 8)
    asm.jump_if("!=", R1, PIO_OFFSET, f"{name}-io")
    asm.load(R1, R8, IO_SIZE, 1)
    asm.load(R2, R8, IO_COUNT, 4)
    asm.jump_if(">", R2, IO_CAPACITY, f"{name}-io-all")
    asm.mul(R1, reg(R2))
    asm.jump_if("<=", R1, PIO_GUESS, f"{name}-io")
    asm.jump_if(">", R1, IO_CAPACITY, f"{name}-io-all")
    asm.mov(R6, reg(R1))
    asm.jump(f"{name}-io")
    asm.label(f"{name}-io-all")
    asm.mov(R6, IO_CAPACITY)
    asm.label(f"{name}-io")


def _emit(asm: Assembler, maps: dict[str, int], record: int, name: str) -> None:
    """Output `record` (its O_SIZE bytes) to the ring, waking nobody (the tracer reads it at
    the tasks' stops); count it lost if it does not fit."""
    asm.load_map(R1, maps["ring"])
    asm.mov(R2, reg(record))
    asm.load(R3, record, O_SIZE, 4)
    asm.mov(R4, _RB_NO_WAKEUP)
    asm.jump_if(">", R3, STATE_SIZE, f"{name}-lost")
    asm.jump_if("<", R3, O_HEADER, f"{name}-lost")
    asm.call(_RINGBUF_OUTPUT)
    asm.jump_if("==", R0, 0, f"{name}-emitted")
    asm.label(f"{name}-lost")
    _count(asm, maps, COUNTERS_LOST, f"{name}-lost")
    asm.label(f"{name}-emitted")


def _count(asm: Assembler, maps: dict[str, int], offset: int, name: str) -> None:
    """counters[offset] += 1 (atomically: every CPU counts into one). Clobbers r0-r5."""
    asm.store_imm(R10, -40, 0, 4)
    _lookup(asm, maps["counters"], -40)
    asm.jump_if("==", R0, 0, f"{name}-uncounted")
    asm.mov(R1, 1)
    asm.atomic_add(R0, offset, R1)
    asm.label(f"{name}-uncounted")


def exit_program(
    maps: dict[str, int], ioctl: int, namespace: tuple[int, int], ring_bytes: int
) -> bytes:
    """At sys_exit: a traced task's KVM_RUN returned; a failure closes its group. When
    the ring is half full, the task is stopped before it returns to the VMM (SIGSTOP, which
    the tracer takes back: a signal-delivery-stop where it reads the ring): the VMM waits for
    the tracer rather than records being lost. The call's result is not changed by it."""
    asm = Assembler()
    asm.load(R6, R1, _ARG_ID_OR_RET, 8)  # r6: the return value
    asm.load(R3, R1, _ARG_REGS, 8)
    asm.add(R3, _REGS_ORIG_AX)
    asm.mov(R1, reg(R10))
    asm.add(R1, -16)
    asm.mov(R2, 8)
    asm.call(_PROBE_READ_KERNEL)
    asm.jump_if("!=", R0, 0, "out")
    asm.load(R1, R10, -16, 8)
    asm.jump_if("!=", R1, ioctl, "out")
    _current_task(asm, namespace)
    asm.store(R10, -4, R0, 4)
    _lookup(asm, maps["tasks"], -4)
    asm.jump_if("==", R0, 0, "out")
    asm.mov(R7, reg(R0))  # r7: the task's state
    asm.load(R1, R7, O_FLAGS, 4)
    asm.mov(R2, reg(R1))
    asm.and_(R2, IN_RUN)
    asm.jump_if("==", R2, 0, "out")  # another ioctl
    asm.and_(R1, ~IN_RUN)
    asm.jump_if("==", R6, 0, "returned")
    asm.store(R7, O_RET, R6, 8)
    asm.or_(R1, CLOSED)
    asm.label("returned")
    asm.store(R7, O_FLAGS, R1, 4)
    asm.and_(R1, THROTTLED)
    asm.jump_if("!=", R1, 0, "out")  # stopped already, not read yet
    asm.load_map(R1, maps["ring"])
    asm.mov(R2, _RB_AVAIL_DATA)
    asm.call(_RINGBUF_QUERY)
    asm.jump_if("<", R0, ring_bytes // 2, "out")
    asm.load(R1, R7, O_FLAGS, 4)
    asm.or_(R1, THROTTLED)
    asm.store(R7, O_FLAGS, R1, 4)
    asm.mov(R1, STOP_SIGNAL)
    asm.call(_SEND_SIGNAL_THREAD)
    asm.label("out")
    asm.mov(R0, 0)
    asm.exit()
    return asm.assemble()


def _u32_as_imm(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value
