"""The committed _generated.py matches the installed headers, and every layout matches gcc's."""

from __future__ import annotations

import ctypes
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conformance.abi import _generated

REPO_ROOT = Path(__file__).resolve().parents[2]
GENERATED = REPO_ROOT / "conformance" / "abi" / "_generated.py"
GENERATOR_PADDING_PREFIX = "_padding"  # members the generator adds; C has no such member


@pytest.mark.needs_gcc
def test_generated_file_matches_a_fresh_generation(tmp_path: Path) -> None:
    fresh = tmp_path / "_generated.py"
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "gen_abi.py"), "-o", str(fresh)], check=True
    )
    assert fresh.read_bytes() == GENERATED.read_bytes(), (
        "conformance/abi/_generated.py is stale: run python tools/gen_abi.py and commit it"
    )


@dataclass(frozen=True)
class FieldPath:
    """A member reachable from a C struct, spelled for C and walked for ctypes."""

    c_designator: str  # "io.port", "entries[0].function"
    python_path: tuple[str, ...]  # ctypes attribute names, anonymous members included
    ctype: Any
    bits: int | None


def is_record(ctype: Any) -> bool:
    return isinstance(ctype, type) and issubclass(ctype, ctypes.Structure | ctypes.Union)


def field_paths(
    cls: Any, c_prefix: str = "", python_prefix: tuple[str, ...] = ()
) -> Iterator[FieldPath]:
    """Every named member, descending into the anonymous types the generator made classes for."""
    anonymous = set(getattr(cls, "_anonymous_", ()))
    for name, ctype, *bits in cls._fields_:
        if name.startswith(GENERATOR_PADDING_PREFIX):
            continue
        python_path = (*python_prefix, name)
        c_designator = c_prefix if name in anonymous else f"{c_prefix}.{name}".lstrip(".")
        if name not in anonymous:
            yield FieldPath(c_designator, python_path, ctype, bits[0] if bits else None)
        element, subscript = ctype, ""
        while isinstance(element, type) and issubclass(element, ctypes.Array):
            element, subscript = element._type_, subscript + "[0]"
        if is_record(element) and element.__name__ not in _generated.C_TYPE_NAMES:
            yield from field_paths(element, c_designator + subscript, python_path)


def python_offset(cls: Any, path: tuple[str, ...]) -> int:
    offset = 0
    for name in path:
        descriptor = getattr(cls, name)
        offset += descriptor.offset
        cls = dict((f[0], f[1]) for f in cls._fields_)[name]
        while issubclass(cls, ctypes.Array):
            cls = cls._type_
    return offset


def bitfield_bytes(cls: Any, path: tuple[str, ...], bits: int) -> str:
    """The object's bytes with only this bit-field set to all ones."""
    instance = cls()
    target = instance
    for name in path[:-1]:
        target = getattr(target, name)
        while isinstance(target, ctypes.Array):  # the C designator indexes arrays with [0]
            target = target[0]
    setattr(target, path[-1], (1 << bits) - 1)
    return bytes(instance).hex()


def c_probe_lines(c_type: str, paths: list[FieldPath]) -> Iterator[str]:
    yield f'printf("size {c_type} %zu %zu\\n", sizeof({c_type}), _Alignof({c_type}));'
    for path in paths:
        label = f"{c_type} {path.c_designator}"
        if path.bits is not None:
            yield (
                f"{{ {c_type} v; memset(&v, 0, sizeof v); v.{path.c_designator} = ~0ULL; "
                f'printf("bits {label} "); dump(&v, sizeof v); }}'
            )
            continue
        member = f"(({c_type} *)0)->{path.c_designator}"
        zero_length = issubclass(path.ctype, ctypes.Array) and path.ctype._length_ == 0
        # sizeof is not allowed on a flexible array member; compare its element size instead
        size = f"sizeof({member}[0])" if zero_length else f"sizeof({member})"
        offset = f"offsetof({c_type}, {path.c_designator})"
        yield f'printf("field {label} %zu %zu\\n", {offset}, {size});'


def python_expectations(cls: Any, c_type: str, paths: list[FieldPath]) -> Iterator[str]:
    yield f"size {c_type} {ctypes.sizeof(cls)} {ctypes.alignment(cls)}"
    for path in paths:
        label = f"{c_type} {path.c_designator}"
        if path.bits is not None:
            yield f"bits {label} {bitfield_bytes(cls, path.python_path, path.bits)}"
            continue
        ctype = path.ctype
        size = ctypes.sizeof(ctype)
        if issubclass(ctype, ctypes.Array) and ctype._length_ == 0:
            size = ctypes.sizeof(ctype._type_)
        yield f"field {label} {python_offset(cls, path.python_path)} {size}"


@pytest.mark.needs_gcc
def test_every_struct_and_field_matches_gcc(tmp_path: Path) -> None:
    probe: list[str] = []
    expected: list[str] = []
    for class_name, c_type in sorted(_generated.C_TYPE_NAMES.items()):
        cls = getattr(_generated, class_name)
        paths = list(field_paths(cls))
        probe += c_probe_lines(c_type, paths)
        expected += python_expectations(cls, c_type, paths)
    source = tmp_path / "layout.c"
    source.write_text(
        "#include <stddef.h>\n#include <stdio.h>\n#include <string.h>\n#include <linux/kvm.h>\n"
        "static void dump(const void *p, size_t n) {\n"
        '    for (size_t i = 0; i < n; i++) printf("%02x", ((const unsigned char *)p)[i]);\n'
        '    printf("\\n");\n}\n'
        "int main(void) {\n" + "\n".join(probe) + "\nreturn 0; }\n"
    )
    subprocess.run(["gcc", "-w", "-o", str(tmp_path / "layout"), str(source)], check=True)
    actual = subprocess.run(
        [str(tmp_path / "layout")], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert len(expected) > len(_generated.C_TYPE_NAMES)  # fields were found, not just sizes
    mismatches = [(e, a) for e, a in zip(expected, actual, strict=True) if e != a]
    assert not mismatches, "\n".join(f"ctypes {e!r} != gcc {a!r}" for e, a in mismatches[:20])


def test_contract_examples_work_c_style() -> None:
    run = _generated.kvm_run()
    run.io.port = 0x3F8
    run.exit_reason = _generated.KVM_EXIT_IO
    assert (run.exit_reason, run.io.port) == (_generated.KVM_EXIT_IO, 0x3F8)
    for name in ("io", "mmio", "internal", "system_event"):
        assert getattr(_generated.kvm_run, name).offset == _generated.kvm_run._anon0.offset
    # the exit structs overlay each other: io.port is bytes 2-3 of mmio.phys_addr and suberror
    assert run.mmio.phys_addr == run.internal.suberror == run.system_event.type == 0x3F8 << 16
    assert (run.io.data_offset, bytes(run.mmio.data)) == (0, bytes(8))
    for flexible in (_generated.kvm_msrs.entries, _generated.kvm_cpuid2.entries):
        assert flexible.size == 0
    assert _generated.KERNEL_HEADERS_VERSION.count(".") == 2
