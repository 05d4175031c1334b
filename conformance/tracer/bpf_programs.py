"""The eBPF recorder's two programs, assembled (bpf_asm.py) for the `sys_enter` and `sys_exit`
raw tracepoints; bpf_kvm_run.py loads them, bpf_layout.py has the state and records they write,
bpf_snapshot_copy.py copies kvm_run, bpf_program_parts.py has what else they share.

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

from conformance.tracer.bpf_asm import R0, R1, R2, R3, R6, R7, R8, R9, R10, Assembler, reg
from conformance.tracer.bpf_layout import (
    CLOSED,
    COPIED,
    EXIT,
    FIRST_RUN,
    IN_RUN,
    NOT_MERGED,
    O_ARG,
    O_COUNT,
    O_FD,
    O_FLAGS,
    O_HEADER,
    O_IO,
    O_IO_LENGTH,
    O_RET,
    O_RUN,
    O_SIZE,
    O_TGID,
    O_TID,
    RING,
    STATE_SIZE,
    STOP_SIGNAL,
    THROTTLED,
)
from conformance.tracer.bpf_program_parts import (
    ARG_ID_OR_RET,
    ARG_REGS,
    PROBE_READ_KERNEL,
    RB_AVAIL_DATA,
    REGS_DX,
    REGS_ORIG_AX,
    RINGBUF_QUERY,
    SEND_SIGNAL_THREAD,
    current_task,
    emit,
    lookup,
    u32_as_imm,
)
from conformance.tracer.bpf_snapshot_copy import copy_snapshot
from conformance.tracer.kvm_calls import KVM_RUN
from conformance.tracer.kvm_run import PIO_GUESS

# The entry program's stack: the saved dx, si, di (24 bytes) from here
_STACK_REGS = -72


def entry_program(maps: dict[str, int], ioctl: int, namespace: tuple[int, int]) -> bytes:
    """At sys_enter: a traced task's KVM_RUN joins its group or starts a new one. `namespace`:
    the (device, inode) of the tracer's PID namespace."""
    asm = Assembler()
    _new_call(asm, maps, ioctl, namespace)
    _copy_previous_exit(asm, maps)
    asm.load(R1, R8, O_FLAGS, 4)
    asm.and_(R1, COPIED)
    asm.jump_if("==", R1, 0, "compare")
    copy_snapshot(asm, maps, "entry")
    asm.label("compare")
    _join_or_start_group(asm, maps)
    _stop_a_first_run(asm)
    asm.label("out")
    asm.mov(R0, 0)
    asm.exit()
    return asm.assemble()


def _new_call(asm: Assembler, maps: dict[str, int], ioctl: int, namespace: tuple[int, int]) -> None:
    """A KVM_RUN of a traced task (else to "out"): r9 its state; r8 this CPU's scratch record
    with the call's tid, tgid, fd, argument and, for a registered vCPU, its page and flags."""
    asm.load(R2, R1, ARG_ID_OR_RET, 8)
    asm.jump_if("!=", R2, ioctl, "out")
    # The arguments dx (arg), si (request), di (fd): 24 bytes of the saved registers.
    asm.load(R3, R1, ARG_REGS, 8)
    asm.add(R3, REGS_DX)
    asm.mov(R1, reg(R10))
    asm.add(R1, _STACK_REGS)
    asm.mov(R2, 24)
    asm.call(PROBE_READ_KERNEL)
    asm.jump_if("!=", R0, 0, "out")
    asm.load(R1, R10, _STACK_REGS + 8, 4)
    asm.jump_if("!=", R1, u32_as_imm(KVM_RUN), "out", wide=False)
    current_task(asm, namespace)
    asm.mov(R7, reg(R0))
    asm.store(R10, -4, R0, 4)  # key: tid
    lookup(asm, maps["tasks"], -4)
    asm.jump_if("==", R0, 0, "out")  # not a traced task
    asm.mov(R9, reg(R0))  # r9: the task's state
    asm.store_imm(R10, -8, 0, 4)
    lookup(asm, maps["scratch"], -8)
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
    lookup(asm, maps["vcpus"], -16)
    asm.jump_if("==", R0, 0, "page-known")  # no vCPU we know: nothing to copy
    asm.load(R1, R0, 0, 8)
    asm.store(R8, O_RUN, R1, 8)
    asm.load(R1, R0, 8, 4)  # COPIED (a page is registered), RING, FIRST_RUN
    asm.store(R8, O_FLAGS, R1, 4)
    asm.label("page-known")


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
    emit(asm, maps, R9, "group-before-exit")
    asm.store_imm(R9, O_COUNT, 0, 8)
    asm.load(R1, R9, O_RUN, 8)
    asm.load(R2, R8, O_FLAGS, 4)
    asm.store(R10, -32, R2, 8)
    asm.store(R8, O_RUN, R1, 8)
    asm.load(R1, R9, O_FLAGS, 4)
    asm.and_(R1, COPIED | RING)
    asm.or_(R1, EXIT)
    asm.store(R8, O_FLAGS, R1, 4)
    copy_snapshot(asm, maps, "exit")
    emit(asm, maps, R8, "exit")
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
    emit(asm, maps, R9, "group")
    asm.label("start")
    asm.mov(R1, reg(R9))
    asm.load(R2, R8, O_SIZE, 4)
    asm.jump_if(">", R2, STATE_SIZE, "out")
    asm.jump_if("<", R2, O_HEADER, "out")
    asm.mov(R3, reg(R8))
    asm.call(PROBE_READ_KERNEL)  # a copy from map value to map value
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
    asm.call(SEND_SIGNAL_THREAD)


def exit_program(
    maps: dict[str, int], ioctl: int, namespace: tuple[int, int], ring_bytes: int
) -> bytes:
    """At sys_exit: a traced task's KVM_RUN returned; a failure closes its group. When
    the ring is half full, the task is stopped before it returns to the VMM (SIGSTOP, which
    the tracer takes back: a signal-delivery-stop where it reads the ring): the VMM waits for
    the tracer rather than records being lost. The call's result is not changed by it."""
    asm = Assembler()
    asm.load(R6, R1, ARG_ID_OR_RET, 8)  # r6: the return value
    asm.load(R3, R1, ARG_REGS, 8)
    asm.add(R3, REGS_ORIG_AX)
    asm.mov(R1, reg(R10))
    asm.add(R1, -16)
    asm.mov(R2, 8)
    asm.call(PROBE_READ_KERNEL)
    asm.jump_if("!=", R0, 0, "out")
    asm.load(R1, R10, -16, 8)
    asm.jump_if("!=", R1, ioctl, "out")
    current_task(asm, namespace)
    asm.store(R10, -4, R0, 4)
    lookup(asm, maps["tasks"], -4)
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
    asm.mov(R2, RB_AVAIL_DATA)
    asm.call(RINGBUF_QUERY)
    asm.jump_if("<", R0, ring_bytes // 2, "out")
    asm.load(R1, R7, O_FLAGS, 4)
    asm.or_(R1, THROTTLED)
    asm.store(R7, O_FLAGS, R1, 4)
    asm.mov(R1, STOP_SIGNAL)
    asm.call(SEND_SIGNAL_THREAD)
    asm.label("out")
    asm.mov(R0, 0)
    asm.exit()
    return asm.assemble()
