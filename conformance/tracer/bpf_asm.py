"""A small eBPF assembler: instruction encoders and labels, so that the tracer's programs are
written in Python and need no compiler at run time (see bpf_kvm_run.py for the one program).

    asm = Assembler()
    asm.mov(R1, 0)
    asm.jump_if("!=", R1, 7, "out")
    ...
    asm.label("out")
    asm.exit()
    instructions = asm.assemble()   # bytes: struct bpf_insn[]

Each instruction is `struct bpf_insn {u8 code; u8 dst:4, src:4; s16 off; s32 imm;}`
(<linux/bpf.h>, <linux/bpf_common.h>); a 64-bit immediate load takes two. Jumps name labels,
forward or backward (the verifier accepts bounded loops). The kernel's verifier is the judge of
what a program may do: tests load every encoder's output into it.

The opcode values below are the kernel's ABI; tests/unit/test_bpf_asm.py checks them against
the installed headers when gcc is present.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# Registers: R0 return value, R1-R5 arguments (clobbered by calls), R6-R9 callee-saved,
# R10 the read-only frame pointer.
R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = range(11)

# <linux/bpf_common.h>, <linux/bpf.h>: instruction classes, sizes, modes, operations
_LD, _LDX, _ST, _STX, _ALU, _JMP, _JMP32, _ALU64 = range(8)
_SIZES = {1: 0x10, 2: 0x08, 4: 0x00, 8: 0x18}  # BPF_B, BPF_H, BPF_W, BPF_DW
_IMM, _MEM, _ATOMIC = 0x00, 0x60, 0xC0
_K, _X = 0x00, 0x08  # source: the immediate, or a register
_ALU_OPS = {
    "+": 0x00,
    "-": 0x10,
    "*": 0x20,
    "/": 0x30,
    "|": 0x40,
    "&": 0x50,
    "<<": 0x60,
    ">>": 0x70,
    "%": 0x90,
    "^": 0xA0,
    "=": 0xB0,
    "s>>": 0xC0,
}
_JUMP_OPS = {
    "==": 0x10,
    ">": 0x20,
    ">=": 0x30,
    "&": 0x40,
    "!=": 0x50,
    "s>": 0x60,
    "s>=": 0x70,
    "<": 0xA0,
    "<=": 0xB0,
    "s<": 0xC0,
    "s<=": 0xD0,
}
_JA, _CALL, _EXIT = 0x00, 0x80, 0x90
_ATOMIC_ADD = 0x00
_PSEUDO_MAP_FD = 1  # BPF_PSEUDO_MAP_FD: a 64-bit load whose immediate is a map's fd
_INSTRUCTION = struct.Struct("<BBhi")
_S16 = (-(1 << 15), (1 << 15) - 1)
_S32 = (-(1 << 31), (1 << 31) - 1)


class AssemblyError(ValueError):
    """An instruction that cannot be encoded (a bad register, an immediate out of range...)."""


@dataclass(frozen=True, slots=True)
class _Instruction:
    code: int
    dst: int
    src: int
    offset: int
    imm: int
    target: str | None = None  # a jump's label, resolved by assemble()


class Assembler:
    """Appends instructions; `assemble()` resolves labels and encodes them."""

    def __init__(self) -> None:
        self._instructions: list[_Instruction] = []
        self._labels: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._instructions)

    def label(self, name: str) -> None:
        if name in self._labels:
            raise AssemblyError(f"label {name!r} defined twice")
        self._labels[name] = len(self._instructions)

    # --- arithmetic -------------------------------------------------------------------------

    def _alu(self, op: str, dst: int, source: int | Register, wide: bool) -> None:
        klass = _ALU64 if wide else _ALU
        if isinstance(source, Register):
            self._append(klass | _ALU_OPS[op] | _X, dst, source.number, 0, 0)
        else:
            self._append(klass | _ALU_OPS[op] | _K, dst, 0, 0, _s32(source))

    def mov(self, dst: int, source: int | Register) -> None:
        self._alu("=", dst, source, True)

    def mov32(self, dst: int, source: int | Register) -> None:
        """dst = (u32) source: clears the upper half."""
        self._alu("=", dst, source, False)

    def add(self, dst: int, source: int | Register) -> None:
        self._alu("+", dst, source, True)

    def sub(self, dst: int, source: int | Register) -> None:
        self._alu("-", dst, source, True)

    def mul(self, dst: int, source: int | Register) -> None:
        self._alu("*", dst, source, True)

    def and_(self, dst: int, source: int | Register) -> None:
        self._alu("&", dst, source, True)

    def or_(self, dst: int, source: int | Register) -> None:
        self._alu("|", dst, source, True)

    def xor(self, dst: int, source: int | Register) -> None:
        self._alu("^", dst, source, True)

    def lsh(self, dst: int, source: int | Register) -> None:
        self._alu("<<", dst, source, True)

    def rsh(self, dst: int, source: int | Register) -> None:
        self._alu(">>", dst, source, True)

    def load_imm64(self, dst: int, value: int) -> None:
        """dst = a 64-bit constant (two instruction slots)."""
        value &= (1 << 64) - 1
        low, high = value & 0xFFFFFFFF, value >> 32
        self._append(_LD | _SIZES[8] | _IMM, dst, 0, 0, _as_s32(low))
        self._append(0, 0, 0, 0, _as_s32(high))

    def load_map(self, dst: int, map_fd: int) -> None:
        """dst = the map whose fd is `map_fd` (the kernel swaps in its address at load)."""
        self._append(_LD | _SIZES[8] | _IMM, dst, _PSEUDO_MAP_FD, 0, map_fd)
        self._append(0, 0, 0, 0, 0)

    # --- memory -----------------------------------------------------------------------------

    def load(self, dst: int, base: int, offset: int, size: int) -> None:
        """dst = *(u{8*size} *)(base + offset), zero-extended."""
        self._append(_LDX | _SIZES[size] | _MEM, dst, base, _s16(offset), 0)

    def store(self, base: int, offset: int, source: int, size: int) -> None:
        """*(u{8*size} *)(base + offset) = source (a register)."""
        self._append(_STX | _SIZES[size] | _MEM, base, source, _s16(offset), 0)

    def store_imm(self, base: int, offset: int, value: int, size: int) -> None:
        """*(u{8*size} *)(base + offset) = value (an immediate, sign-extended to 8 bytes)."""
        self._append(_ST | _SIZES[size] | _MEM, base, 0, _s16(offset), _s32(value))

    def atomic_add(self, base: int, offset: int, source: int, size: int = 8) -> None:
        """*(base + offset) += source, atomically (other CPUs may add at the same time)."""
        if size not in (4, 8):
            raise AssemblyError("atomic add works on 4 or 8 bytes")
        self._append(_STX | _SIZES[size] | _ATOMIC, base, source, _s16(offset), _ATOMIC_ADD)

    # --- control ----------------------------------------------------------------------------

    def jump(self, target: str) -> None:
        self._append(_JMP | _JA, 0, 0, 0, 0, target=target)

    def jump_if(
        self, op: str, dst: int, source: int | Register, target: str, *, wide: bool = True
    ) -> None:
        """if (dst OP source) goto target; `op` as in C ("s<" etc. compare signed), on 64 bits
        or, `wide=False`, on the low 32 bits of both."""
        klass = _JMP if wide else _JMP32
        if isinstance(source, Register):
            self._append(klass | _JUMP_OPS[op] | _X, dst, source.number, 0, 0, target=target)
        else:
            self._append(klass | _JUMP_OPS[op] | _K, dst, 0, 0, _s32(source), target=target)

    def call(self, helper: int) -> None:
        """Call kernel helper number `helper` (BPF_FUNC_*): arguments in R1-R5, result in R0."""
        self._append(_JMP | _CALL, 0, 0, 0, helper)

    def exit(self) -> None:
        self._append(_JMP | _EXIT, 0, 0, 0, 0)

    def assemble(self) -> bytes:
        encoded = bytearray()
        for index, instruction in enumerate(self._instructions):
            offset = instruction.offset
            if instruction.target is not None:
                if instruction.target not in self._labels:
                    raise AssemblyError(f"jump to undefined label {instruction.target!r}")
                offset = _s16(self._labels[instruction.target] - index - 1)
            encoded += _INSTRUCTION.pack(
                instruction.code,
                instruction.src << 4 | instruction.dst,
                offset,
                instruction.imm,
            )
        return bytes(encoded)

    def _append(
        self, code: int, dst: int, src: int, offset: int, imm: int, *, target: str | None = None
    ) -> None:
        for register in (dst, src):
            if not R0 <= register <= R10:
                raise AssemblyError(f"no register r{register}")
        self._instructions.append(_Instruction(code, dst, src, offset, imm, target))


@dataclass(frozen=True, slots=True)
class Register:
    number: int


def reg(number: int) -> Register:
    """A register as an operand: `asm.add(R1, reg(R2))` is r1 += r2; `asm.add(R1, 2)`, r1 += 2."""
    if not R0 <= number <= R10:
        raise AssemblyError(f"no register r{number}")
    return Register(number)


def _s16(value: int) -> int:
    if not _S16[0] <= value <= _S16[1]:
        raise AssemblyError(f"offset {value} does not fit in 16 bits")
    return value


def _s32(value: int) -> int:
    if not _S32[0] <= value <= _S32[1]:
        raise AssemblyError(f"immediate {value:#x} does not fit in 32 signed bits")
    return value


def _as_s32(value: int) -> int:
    """An unsigned 32-bit half of a 64-bit constant, as the signed field that carries it."""
    return value - (1 << 32) if value >= 1 << 31 else value
