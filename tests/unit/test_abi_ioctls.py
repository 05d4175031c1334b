"""The ioctl table covers every ioctl of linux/kvm.h, and its entries are consistent."""

from __future__ import annotations

import ctypes
import re
import subprocess
from pathlib import Path

import pytest

from conformance.abi import _generated, ioctls
from conformance.abi.ioctls import ArgKind, Direction, FdKind

# ioctls whose number's size field is not the size of what the kernel reads (see _NOTES there).
SIZE_EXCEPTIONS = {"KVM_REINJECT_CONTROL", "KVM_MEMORY_ENCRYPT_OP"}
SCALAR_SIZES = {"__u32": 4, "__u64": 8, "int": 4, "unsigned long": 8}
STRUCT_KINDS = {ArgKind.STRUCT_IN, ArgKind.STRUCT_OUT, ArgKind.STRUCT_INOUT}


def header_ioctl_macros(tmp_path: Path) -> set[str]:
    """KVM_* macros defined as _IO*(KVMIO, ...) or as an alias of one, found independently of
    the generator; aliases through __KVM_DEPRECATED_* names are not ioctls any more."""
    source = tmp_path / "macros.c"
    source.write_text("#include <linux/kvm.h>\n")
    listing = subprocess.run(
        ["gcc", "-dM", "-E", str(source)], capture_output=True, text=True, check=True
    ).stdout
    bodies = dict(re.findall(r"^#define (\w+) (.*)$", listing, re.MULTILINE))
    direct = {name for name, body in bodies.items() if re.match(r"_IO[RW]*\(KVMIO\b", body)}
    aliases = {name for name, body in bodies.items() if body in direct}
    found = {name for name in direct | aliases if name.startswith("KVM_")}
    return {name for name in found if not bodies[name].startswith("__KVM_DEPRECATED_")}


def compiles(tmp_path: Path, body: str) -> bool:
    source = tmp_path / "check.c"
    source.write_text(f"#include <stdio.h>\n#include <linux/kvm.h>\n{body}\n")
    result = subprocess.run(
        ["gcc", "-w", "-o", str(tmp_path / "check"), str(source)], capture_output=True, check=False
    )
    return result.returncode == 0


@pytest.mark.needs_gcc
def test_table_has_every_header_ioctl_with_the_compilers_number(tmp_path: Path) -> None:
    header_names = header_ioctl_macros(tmp_path)
    unavailable = set(_generated.UNAVAILABLE_IOCTLS)
    assert set(ioctls.IOCTLS) | unavailable == header_names
    assert len(ioctls.IOCTLS) + len(unavailable) == len(header_names)
    prints = "".join(
        f'printf("{name} %lu\\n", (unsigned long){name});' for name in sorted(ioctls.IOCTLS)
    )
    assert compiles(tmp_path, f"int main(void) {{ {prints} return 0; }}")
    output = subprocess.run([str(tmp_path / "check")], capture_output=True, text=True, check=True)
    numbers = {
        name: int(value) for name, value in (line.split() for line in output.stdout.splitlines())
    }
    assert numbers == {name: spec.number for name, spec in ioctls.IOCTLS.items()}


@pytest.mark.needs_gcc
def test_unavailable_ioctls_really_name_a_type_x86_does_not_define(tmp_path: Path) -> None:
    for c_type in sorted(set(_generated.UNAVAILABLE_IOCTLS.values())):
        assert not compiles(tmp_path, f"int size = sizeof({c_type});"), c_type


def test_knowledge_tables_name_only_real_ioctls() -> None:
    known = set(_generated.IOCTL_NUMBERS) | set(_generated.UNAVAILABLE_IOCTLS)
    assert known >= ioctls.KNOWLEDGE_NAMES, sorted(ioctls.KNOWLEDGE_NAMES - known)


@pytest.mark.parametrize("spec", ioctls.IOCTLS.values(), ids=lambda spec: spec.name)
def test_spec_is_consistent(spec: ioctls.IoctlSpec) -> None:
    assert ioctls.by_name(spec.name) is spec
    assert spec.fd_kinds
    if spec.arg_kind is ArgKind.NONE:
        assert spec.direction is Direction.NONE and spec.struct is None
    if spec.arg_kind is ArgKind.VARIABLE:
        assert spec.struct is not None and spec.entries_field is not None
        assert hasattr(spec.struct, spec.entries_field)
        assert spec.count_field is None or hasattr(spec.struct, spec.count_field)
    else:
        assert spec.count_field is None and spec.entries_field is None
    if spec.arg_kind in STRUCT_KINDS | {ArgKind.VARIABLE} and spec.name not in SIZE_EXCEPTIONS:
        expected_size = (
            ctypes.sizeof(spec.struct) if spec.struct else SCALAR_SIZES[spec.arg_type or ""]
        )
        assert expected_size == spec.size
    if spec.direction is not spec.declared_direction or spec.name in SIZE_EXCEPTIONS:
        assert spec.arg_kind is not ArgKind.NONE


def test_size_exceptions_pass_the_struct_the_kernel_reads() -> None:
    for name in SIZE_EXCEPTIONS:
        spec = ioctls.by_name(name)
        assert spec.struct is not None and spec.note is not None, name
        assert ctypes.sizeof(spec.struct) != spec.size


def test_known_direction_corrections() -> None:
    for name in ("KVM_SET_IRQCHIP", "KVM_SET_PIT", "KVM_REINJECT_CONTROL"):
        assert ioctls.by_name(name).direction is Direction.WRITE
    assert ioctls.by_name("KVM_GET_DIRTY_LOG").direction is Direction.READ_WRITE
    assert ioctls.by_name("KVM_MEMORY_ENCRYPT_OP").struct is _generated.kvm_sev_cmd


def test_fd_creating_ioctls() -> None:
    created = {spec.name: spec.creates for spec in ioctls.IOCTLS.values() if spec.creates}
    assert created == {
        "KVM_CREATE_VM": "vm",
        "KVM_CREATE_VCPU": "vcpu",
        "KVM_CREATE_DEVICE": "device",
        "KVM_GET_STATS_FD": "stats",
    }


def test_by_number_finds_every_spec_on_its_fd_kinds() -> None:
    for spec in ioctls.IOCTLS.values():
        for kind in FdKind:
            if kind in spec.fd_kinds:
                found = ioctls.by_number(spec.number, kind)
                assert found is not None and found.number == spec.number
    assert ioctls.by_number(_generated.IOCTL_NUMBERS["KVM_RUN"]) is ioctls.by_name("KVM_RUN")
    assert ioctls.by_number(_generated.IOCTL_NUMBERS["KVM_RUN"], FdKind.VM) is None
    assert ioctls.by_number(0) is None


def test_shared_numbers_are_told_apart_by_fd_kind() -> None:
    number = _generated.IOCTL_NUMBERS["KVM_GET_ONE_REG"]
    assert number == _generated.IOCTL_NUMBERS["KVM_ARM_SET_DEVICE_ADDR"]
    assert ioctls.by_number(number, FdKind.VCPU) is ioctls.by_name("KVM_GET_ONE_REG")
    assert ioctls.by_number(number, FdKind.VM) is ioctls.by_name("KVM_ARM_SET_DEVICE_ADDR")


def test_describe_table_has_one_sorted_line_per_ioctl() -> None:
    lines = ioctls.describe_table()
    assert len(lines) == len(ioctls.IOCTLS)
    keys = [(int(line.split()[1], 16), line.split()[0]) for line in lines]
    assert keys == sorted(keys)
    assert all(len(line.split()) == 5 for line in lines)
    assert "KVM_RUN 0x0000ae80 NONE VCPU none" in lines
    assert "KVM_CREATE_VCPU 0x0000ae41 NONE VM integer" in lines
    assert "KVM_GET_MSRS 0xc008ae88 READ_WRITE SYSTEM|VCPU variable:kvm_msrs[nmsrs]" in lines
    assert "KVM_SET_REGS 0x4090ae82 WRITE VCPU struct_in:kvm_regs" in lines
