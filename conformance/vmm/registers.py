"""A readable dump of a vCPU's registers, for fault reports."""

from __future__ import annotations

from typing import Any

_GENERAL = (
    ("rax", "rbx", "rcx", "rdx"),
    ("rsi", "rdi", "rbp", "rsp"),
    ("r8", "r9", "r10", "r11"),
    ("r12", "r13", "r14", "r15"),
)
_SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")


def format_registers(regs: Any, sregs: Any) -> str:
    """kvm_regs and kvm_sregs as lines like a debugger prints them (hex, fixed width)."""
    lines = [f"RIP={regs.rip:016x} RFLAGS={regs.rflags:016x}"]
    for names in _GENERAL:
        lines.append(" ".join(f"{name.upper():>3}={getattr(regs, name):016x}" for name in names))
    for name in _SEGMENTS:
        segment = getattr(sregs, name)
        lines.append(
            f"{name.upper():<3} sel={segment.selector:04x} base={segment.base:016x} "
            f"limit={segment.limit:08x} type={segment.type:x} p={segment.present} "
            f"dpl={segment.dpl} db={segment.db} s={segment.s} l={segment.l} g={segment.g}"
        )
    lines.append(f"GDT base={sregs.gdt.base:016x} limit={sregs.gdt.limit:04x}")
    lines.append(f"IDT base={sregs.idt.base:016x} limit={sregs.idt.limit:04x}")
    lines.append(
        f"CR0={sregs.cr0:016x} CR2={sregs.cr2:016x} CR3={sregs.cr3:016x} CR4={sregs.cr4:016x}"
    )
    lines.append(f"CR8={sregs.cr8:016x} EFER={sregs.efer:016x} APIC_BASE={sregs.apic_base:016x}")
    return "\n".join(lines)
