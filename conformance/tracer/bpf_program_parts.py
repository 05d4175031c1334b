"""What the eBPF recorder's programs (bpf_programs.py, bpf_snapshot_copy.py) share: the kernel's
helper numbers and register offsets, naming the running task, map lookups, ring output and the
counters. Every function appends instructions to an Assembler (bpf_asm.py).

The programs' stack, from r10 down: -4 the tasks key (tid), -8 the scratch key, -16 the vcpus
key (tgid, fd), -24 and -32 the new call's page and flags while an EXIT record is built, -40 the
counters key, -72..-48 the saved dx, si, di, -80 struct bpf_pidns_info.
"""

from __future__ import annotations

from conformance.tracer.bpf_asm import R0, R1, R2, R3, R4, R10, Assembler, reg
from conformance.tracer.bpf_layout import COUNTERS_LOST, O_HEADER, O_SIZE, STATE_SIZE

# Helpers (<linux/bpf.h>, enum bpf_func_id)
MAP_LOOKUP_ELEM = 1
GET_CURRENT_PID_TGID = 14
GET_NS_CURRENT_PID_TGID = 120
PROBE_READ_USER = 112
PROBE_READ_KERNEL = 113
RINGBUF_OUTPUT = 130
RINGBUF_QUERY = 134
SEND_SIGNAL_THREAD = 117
RB_NO_WAKEUP = 1
RB_AVAIL_DATA = 0
# struct pt_regs (<asm/ptrace.h>, x86-64): the syscall's number and arguments as saved at entry
REGS_DX, REGS_SI, REGS_DI, REGS_ORIG_AX = 96, 104, 112, 120
# The raw tracepoints' arguments: sys_enter(struct pt_regs *, long id), sys_exit(regs, long ret)
ARG_REGS, ARG_ID_OR_RET = 0, 8
STACK_TASK = -80  # struct bpf_pidns_info
PROC_PID_INIT_INO = 0xEFFFFFFC  # <linux/proc_ns.h>: the initial PID namespace's inode


def current_task(asm: Assembler, namespace: tuple[int, int]) -> None:
    """r0 = tid | tgid << 32 of the running task as the tracer's PID namespace numbers it (the
    tracer's tids; the kernel's global ones differ in a container), or to "out" when the task is
    in another namespace (not ours to trace).

    In the initial namespace (the usual case outside containers) the tracer's tids are the
    kernel's: bpf_get_current_pid_tgid, several times cheaper, says the same, and a task of
    another namespace is never in the tasks map (follow() refuses it)."""
    device, inode = namespace
    if inode == PROC_PID_INIT_INO:
        asm.call(GET_CURRENT_PID_TGID)
        return
    asm.load_imm64(R1, device)
    asm.load_imm64(R2, inode)
    asm.mov(R3, reg(R10))
    asm.add(R3, STACK_TASK)
    asm.mov(R4, 8)  # struct bpf_pidns_info {u32 pid, tgid}
    asm.call(GET_NS_CURRENT_PID_TGID)
    asm.jump_if("!=", R0, 0, "out")
    asm.load(R0, R10, STACK_TASK, 8)


def lookup(asm: Assembler, map_fd: int, key_offset: int) -> None:
    """r0 = the value under the key at r10 + key_offset, or 0."""
    asm.load_map(R1, map_fd)
    asm.mov(R2, reg(R10))
    asm.add(R2, key_offset)
    asm.call(MAP_LOOKUP_ELEM)


def emit(asm: Assembler, maps: dict[str, int], record: int, name: str) -> None:
    """Output `record` (its O_SIZE bytes) to the ring, waking nobody (the tracer reads it at
    the tasks' stops); count it lost if it does not fit."""
    asm.load_map(R1, maps["ring"])
    asm.mov(R2, reg(record))
    asm.load(R3, record, O_SIZE, 4)
    asm.mov(R4, RB_NO_WAKEUP)
    asm.jump_if(">", R3, STATE_SIZE, f"{name}-lost")
    asm.jump_if("<", R3, O_HEADER, f"{name}-lost")
    asm.call(RINGBUF_OUTPUT)
    asm.jump_if("==", R0, 0, f"{name}-emitted")
    asm.label(f"{name}-lost")
    count(asm, maps, COUNTERS_LOST, f"{name}-lost")
    asm.label(f"{name}-emitted")


def count(asm: Assembler, maps: dict[str, int], offset: int, name: str) -> None:
    """counters[offset] += 1 (atomically: every CPU counts into one). Clobbers r0-r5."""
    asm.store_imm(R10, -40, 0, 4)
    lookup(asm, maps["counters"], -40)
    asm.jump_if("==", R0, 0, f"{name}-uncounted")
    asm.mov(R1, 1)
    asm.atomic_add(R0, offset, R1)
    asm.label(f"{name}-uncounted")


def u32_as_imm(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value
