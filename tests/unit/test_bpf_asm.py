"""The eBPF assembler's encodings, checked by the kernel: each program below is verified and
run (BPF_PROG_TEST_RUN on a socket filter) and must return what its instructions compute;
the recorder's two programs must pass the verifier; and the constants the adapter and the
assembler copy from <linux/bpf.h> and <asm/ptrace.h> must match the installed headers.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from conformance.tracer import bpf_asm, bpf_kvm_run, bpf_program_parts, bpf_sys
from conformance.tracer.bpf_asm import (
    R0,
    R1,
    R2,
    R3,
    R6,
    R10,
    Assembler,
    AssemblyError,
    reg,
)

_PACKET = bytes(64)  # socket filters run on a packet; these programs do not read it


def _returns(build: Callable[[Assembler], None]) -> int:
    asm = Assembler()
    build(asm)
    asm.exit()
    program = bpf_sys.load_program(bpf_sys.PROG_SOCKET_FILTER, asm.assemble())
    try:
        return bpf_sys.run_once(program, _PACKET)
    finally:
        os.close(program)


def _alu(op: Callable[[Assembler], None], start: int) -> int:
    def build(asm: Assembler) -> None:
        asm.load_imm64(R0, start)
        op(asm)

    return _returns(build)


_ALU_CASES = [
    ("mov", lambda a: a.mov(R0, 7), 0, 7),
    ("add", lambda a: a.add(R0, 5), 10, 15),
    ("add negative", lambda a: a.add(R0, -3), 10, 7),
    ("sub", lambda a: a.sub(R0, 4), 10, 6),
    ("mul", lambda a: a.mul(R0, 6), 7, 42),
    ("and", lambda a: a.and_(R0, 0xF0), 0x1FF, 0xF0),
    ("or", lambda a: a.or_(R0, 0x0F), 0x30, 0x3F),
    ("xor", lambda a: a.xor(R0, 0xFF), 0x0F, 0xF0),
    ("lsh", lambda a: a.lsh(R0, 4), 3, 48),
    ("rsh 64", lambda a: a.rsh(R0, 32), 0x1234_5678_0000_0000, 0x1234_5678),
    ("mov32 clears the upper half", lambda a: (a.mov32(R0, reg(R0)), a.rsh(R0, 32)),
     0xFFFF_FFFF_0000_0001, 0),
    ("register source", lambda a: (a.mov(R1, 9), a.add(R0, reg(R1))), 1, 10),
]  # fmt: skip


@pytest.mark.needs_bpf
@pytest.mark.parametrize(
    ("name", "op", "start", "expected"), _ALU_CASES, ids=[c[0] for c in _ALU_CASES]
)
def test_arithmetic_computes_in_the_kernel_what_it_says(
    name: str, op: Callable[[Assembler], None], start: int, expected: int
) -> None:
    assert _alu(op, start) == expected


_JUMPS = [
    ("==", 5, 5, True), ("==", 5, 6, False), ("!=", 5, 6, True), (">", 7, 6, True),
    (">", 6, 7, False), (">=", 6, 6, True), ("<", 6, 7, True), ("<=", 8, 7, False),
    ("&", 0b1010, 0b0010, True), ("s<", -1, 0, True), ("<", -1, 0, False), ("s>", 0, -1, True),
    ("s>=", -2, -2, True), ("s<=", -3, -4, False),
]  # fmt: skip


@pytest.mark.needs_bpf
@pytest.mark.parametrize(("op", "left", "right", "taken"), _JUMPS)
@pytest.mark.parametrize("with_register", [False, True])
def test_each_conditional_jump_is_taken_as_c_would(
    op: str, left: int, right: int, taken: bool, with_register: bool
) -> None:
    def build(asm: Assembler) -> None:
        asm.load_imm64(R1, left)
        source: int | bpf_asm.Register = right
        if with_register:
            asm.load_imm64(R2, right)
            source = reg(R2)
        asm.mov(R0, 1)
        asm.jump_if(op, R1, source, "taken")
        asm.mov(R0, 0)
        asm.label("taken")

    assert _returns(build) == int(taken)


@pytest.mark.needs_bpf
def test_32_bit_jumps_compare_the_low_halves_only() -> None:
    def build(asm: Assembler) -> None:
        asm.load_imm64(R1, 0x0000_0001_0000_0005)
        asm.mov(R0, 1)
        asm.jump_if("==", R1, 5, "done", wide=False)
        asm.mov(R0, 0)
        asm.label("done")

    assert _returns(build) == 1


@pytest.mark.needs_bpf
def test_stack_stores_and_loads_of_each_size_and_a_backward_loop() -> None:
    def build(asm: Assembler) -> None:
        asm.load_imm64(R1, 0x1122_3344_5566_7788)
        asm.store(R10, -8, R1, 8)
        asm.load(R2, R10, -8, 1)  # 0x88
        asm.load(R3, R10, -6, 2)  # 0x5566
        asm.add(R2, reg(R3))
        asm.store_imm(R10, -16, 0x10, 4)
        asm.load(R3, R10, -16, 4)
        asm.add(R2, reg(R3))  # 0x88 + 0x5566 + 0x10
        asm.mov(R6, 0)  # a bounded loop: 4 rounds of += 1
        asm.label("loop")
        asm.jump_if(">=", R6, 4, "done")
        asm.add(R6, 1)
        asm.jump("loop")
        asm.label("done")
        asm.mov(R0, reg(R2))
        asm.add(R0, reg(R6))

    assert _returns(build) == 0x88 + 0x5566 + 0x10 + 4


@pytest.mark.needs_bpf
def test_a_map_its_lookup_helper_and_an_atomic_add() -> None:
    counters = bpf_sys.create_map(bpf_sys.MAP_ARRAY, 4, 8, 1)
    try:

        def build(asm: Assembler) -> None:
            asm.store_imm(R10, -4, 0, 4)
            asm.load_map(R1, counters)
            asm.mov(R2, reg(R10))
            asm.add(R2, -4)
            asm.call(1)  # bpf_map_lookup_elem
            asm.mov(R6, reg(R0))
            asm.mov(R0, 0)
            asm.jump_if("==", R6, 0, "out")
            asm.mov(R1, 3)
            asm.atomic_add(R6, 0, R1)
            asm.load(R0, R6, 0, 8)
            asm.label("out")

        assert _returns(build) == 3
        assert _returns(build) == 6  # the map keeps its value between runs
        assert bpf_sys.lookup(counters, bytes(4), 8) == (6).to_bytes(8, "little")
    finally:
        os.close(counters)


def test_what_cannot_be_encoded_is_refused_before_the_kernel_sees_it() -> None:
    asm = Assembler()
    with pytest.raises(AssemblyError, match="register"):
        asm.mov(11, 0)
    with pytest.raises(AssemblyError, match="32 signed bits"):
        asm.mov(R0, 1 << 31)
    with pytest.raises(AssemblyError, match="16 bits"):
        asm.load(R0, R1, 1 << 15, 8)
    asm.jump("nowhere")
    with pytest.raises(AssemblyError, match="undefined label"):
        asm.assemble()
    asm.label("twice")
    with pytest.raises(AssemblyError, match="twice"):
        asm.label("twice")


def test_encodings_are_the_kernel_s_instruction_layout() -> None:
    asm = Assembler()
    asm.mov(R1, reg(R6))  # BPF_ALU64 | BPF_MOV | BPF_X
    asm.load(R2, R1, -8, 4)  # BPF_LDX | BPF_W | BPF_MEM
    asm.load_map(R1, 7)  # BPF_LD | BPF_DW | BPF_IMM, src BPF_PSEUDO_MAP_FD
    asm.exit()
    assert asm.assemble() == bytes.fromhex(
        "bf61000000000000" "6112f8ff00000000" "1811000007000000" "0000000000000000"
        "9500000000000000"
    )  # fmt: skip


@pytest.mark.needs_bpf
def test_the_recorder_s_programs_pass_the_verifier() -> None:
    recorder, why_not = bpf_kvm_run.KvmRunRecorder.start()
    assert recorder is not None, why_not
    recorder.close()


_HEADER_PROBE = r"""
#include <stdio.h>
#include <stddef.h>
#include <linux/bpf.h>
#include <asm/ptrace.h>
#include <sys/syscall.h>
int main(void) {
    printf("%d %d %d %d %d %d %d %d\n", __NR_bpf, BPF_MAP_CREATE, BPF_MAP_LOOKUP_ELEM,
           BPF_MAP_UPDATE_ELEM, BPF_MAP_DELETE_ELEM, BPF_PROG_LOAD, BPF_PROG_TEST_RUN,
           BPF_RAW_TRACEPOINT_OPEN);
    printf("%d %d %d %d %d %d %d\n", BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_ARRAY,
           BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_RINGBUF, BPF_PROG_TYPE_SOCKET_FILTER,
           BPF_PROG_TYPE_RAW_TRACEPOINT, BPF_F_NO_PREALLOC);
    printf("%zu %zu %zu %zu %zu\n", sizeof(union bpf_attr), offsetof(union bpf_attr, map_name),
           offsetof(union bpf_attr, prog_name), offsetof(union bpf_attr, test.data_in),
           offsetof(union bpf_attr, raw_tracepoint.prog_fd));
    printf("%zu %zu %zu %zu\n", offsetof(struct pt_regs, rdx), offsetof(struct pt_regs, rsi),
           offsetof(struct pt_regs, rdi), offsetof(struct pt_regs, orig_rax));
    printf("%d %d %d %d %d %d %d %d\n", BPF_FUNC_map_lookup_elem,
           BPF_FUNC_get_ns_current_pid_tgid, BPF_FUNC_get_current_pid_tgid,
           BPF_FUNC_probe_read_user, BPF_FUNC_probe_read_kernel, BPF_FUNC_ringbuf_output,
           BPF_FUNC_send_signal_thread, BPF_FUNC_ringbuf_query);
    printf("%d %d %d %d %d\n", BPF_RB_NO_WAKEUP, BPF_RB_AVAIL_DATA, BPF_RINGBUF_HDR_SZ,
           BPF_PSEUDO_MAP_FD, BPF_ADD);
    return 0;
}
"""


@pytest.mark.needs_gcc
def test_the_copied_constants_are_the_installed_headers(tmp_path: Path) -> None:
    source = tmp_path / "probe.c"
    source.write_text(_HEADER_PROBE)
    subprocess.run(["gcc", "-o", str(tmp_path / "probe"), str(source)], check=True)
    printed = subprocess.run([str(tmp_path / "probe")], capture_output=True, text=True,
                             check=True).stdout.split()  # fmt: skip
    k, s = bpf_program_parts, bpf_sys
    ours = [
        s._NR_BPF, s._BPF_MAP_CREATE, s._BPF_MAP_LOOKUP_ELEM, s._BPF_MAP_UPDATE_ELEM,
        s._BPF_MAP_DELETE_ELEM, s._BPF_PROG_LOAD, s._BPF_PROG_TEST_RUN,
        s._BPF_RAW_TRACEPOINT_OPEN,
        s.MAP_HASH, s.MAP_ARRAY, s.MAP_PERCPU_ARRAY, s.MAP_RINGBUF, s.PROG_SOCKET_FILTER,
        s.PROG_RAW_TRACEPOINT, s.NO_PREALLOC,
        s._ATTR_SIZE, s._MAP_NAME_OFFSET, s._PROG_NAME_OFFSET, s._TEST_RUN.size - 8,
        s._RAW_TRACEPOINT_OPEN.size - 4,
        k.REGS_DX, k.REGS_SI, k.REGS_DI, k.REGS_ORIG_AX,
        k.MAP_LOOKUP_ELEM, k.GET_NS_CURRENT_PID_TGID, k.GET_CURRENT_PID_TGID, k.PROBE_READ_USER,
        k.PROBE_READ_KERNEL,
        k.RINGBUF_OUTPUT, k.SEND_SIGNAL_THREAD, k.RINGBUF_QUERY,
        k.RB_NO_WAKEUP, k.RB_AVAIL_DATA, s.RINGBUF_HEADER_SIZE, bpf_asm._PSEUDO_MAP_FD,
        bpf_asm._ATOMIC_ADD,
    ]  # fmt: skip
    assert [int(word) for word in printed] == ours
