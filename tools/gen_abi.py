"""Generate conformance/abi/_generated.py from the installed <linux/kvm.h> (and the mmap
flags of <linux/mman.h> and the system call numbers of <asm/unistd_64.h> beside it).

The kernel headers are the only source of truth: gcc lists the macros (`gcc -dM -E`), a probe
program compiled by gcc prints every ioctl number, integer constant and system call number, and
the probe's DWARF (read with pyelftools) gives every struct and union exactly as the compiler
laid it out. Nothing in the output is typed in by a person.

Usage: python tools/gen_abi.py [-o PATH]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from abi_layout import ClassDef, build_classes, render_classes, verify_rendered

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "conformance" / "abi" / "_generated.py"
GCC = "gcc"
# -ftrack-macro-expansion=0 makes gcc report an error on the probe line that used the macro,
# not inside the header, so a failing probe line can be found and dropped.
GCC_FLAGS = ["-gdwarf-5", "-O0", "-ftrack-macro-expansion=0", "-w"]
# The header files whose struct, union and enum definitions are part of the ABI we describe.
KVM_HEADER_SUFFIXES = ("/linux/kvm.h", "/asm/kvm.h")
# linux/mman.h: the mmap/mremap flags beside KVM calls (guest RAM is MAP_FIXED inside a
# reservation, MAP_NORESERVE, PROT_NONE...); Python's mmap module does not name all of them.
# asm/unistd_64.h: the x86-64 system call numbers the tracer filters and issues.
ABI_HEADERS = ("linux/kvm.h", "linux/mman.h", "asm/unistd_64.h")
CONSTANT_PREFIXES = ("KVM_", "MAP_", "MREMAP_", "PROT_")
SYSCALL_PREFIX = "__NR_"

# Argument types of ioctls that are not structs: the kernel reads or writes one such value.
SCALAR_ARG_TYPES = {"int", "unsigned long", "__u32", "__u64"}

OBJECT_MACRO = re.compile(r"#define (?P<name>\w+)(?P<params>\([^)]*\))?(?: (?P<body>.*))?")
IOCTL_BODY = re.compile(r"(?P<kind>_IOWR|_IOR|_IOW|_IO)\s*\((?P<args>.*)\)")
GCC_ERROR_LINE = re.compile(r"^probe\.c:(?P<line>\d+):\d+: error:", re.MULTILINE)
LINE_MARKER = re.compile(r'^# \d+ "(?P<file>[^"]+)"')
TAG_DEFINITION = re.compile(r"\b(?P<kind>struct|union|enum)\s+(?P<tag>\w+)\s*\{")


@dataclass(frozen=True)
class IoctlMacro:
    name: str
    arg_type: str | None  # as written, without "struct "/"union ": "kvm_regs", "__u64", None
    arg_type_c: str | None  # as C needs it: "struct kvm_regs"


@dataclass(frozen=True)
class ProbeResults:
    ioctl_numbers: dict[str, int]
    constants: dict[str, int]
    syscall_numbers: dict[str, int]  # system call name (without __NR_) -> number
    unavailable_ioctls: dict[str, str]  # name -> C type this compiler has no definition for


def run_gcc(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GCC, *args], cwd=cwd, capture_output=True, text=True, check=False)


def read_macros(workdir: Path) -> dict[str, str]:
    """Every object-like macro visible after including the ABI headers, name -> body."""
    source = workdir / "macros.c"
    source.write_text(
        "".join(f"#include <{header}>\n" for header in (*ABI_HEADERS, "linux/version.h"))
    )
    result = run_gcc(["-dM", "-E", source.name], workdir)
    result.check_returncode()
    macros: dict[str, str] = {}
    for line in result.stdout.splitlines():
        match = OBJECT_MACRO.fullmatch(line)
        if match and not match["params"]:
            macros[match["name"]] = match["body"] or ""
    return macros


def headers_version(macros: dict[str, str]) -> str:
    # LINUX_VERSION_CODE caps the sublevel at 255, so use the three separate macros.
    parts = ("LINUX_VERSION_MAJOR", "LINUX_VERSION_PATCHLEVEL", "LINUX_VERSION_SUBLEVEL")
    return ".".join(str(int(macros[part])) for part in parts)


def split_top_level(text: str) -> list[str]:
    """Split macro arguments on the commas that are not inside parentheses."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        depth += {"(": 1, ")": -1}.get(char, 0)
        current.append(char)
    parts.append("".join(current).strip())
    return parts


def resolve_alias(name: str, macros: dict[str, str]) -> list[str]:
    """The chain of macro names `name` expands through, while a body is just another name."""
    chain = [name]
    while (body := macros[chain[-1]].strip()) in macros and body not in chain:
        chain.append(body)
    return chain


def find_ioctl_macros(macros: dict[str, str]) -> list[IoctlMacro]:
    """KVM_* macros that expand (directly or through an alias) to _IO*(KVMIO, ...).

    Skipped: names that expand through a `__KVM_DEPRECATED_*` alias (KVM_TRACE_ENABLE,
    KVM_DEBUG_GUEST, KVM_ASSIGN_IRQ, ...). The kernel removed those ioctls long ago; the header
    keeps the names only so that old userspace still compiles, the structs some of them name are
    no longer defined, and the kernel answers all of them with ENOTTY.
    """
    found = []
    for name in sorted(macros):
        if not name.startswith("KVM_"):
            continue
        chain = resolve_alias(name, macros)
        if any(alias.startswith("__KVM_DEPRECATED_") for alias in chain):
            continue
        match = IOCTL_BODY.fullmatch(macros[chain[-1]].strip())
        if not match:
            continue
        args = split_top_level(match["args"])
        if args[0] != "KVMIO":
            continue
        if match["kind"] == "_IO":
            found.append(IoctlMacro(name, None, None))
            continue
        c_type = " ".join(args[2].split())
        found.append(IoctlMacro(name, re.sub(r"^(struct|union) ", "", c_type), c_type))
    return found


def find_kvm_tags(workdir: Path) -> list[str]:
    """`struct x`, `union x` and `enum x` defined in linux/kvm.h or asm/kvm.h (C spelling)."""
    source = workdir / "tags.c"
    source.write_text("#include <linux/kvm.h>\n")
    result = run_gcc(["-E", source.name], workdir)
    result.check_returncode()
    tags: set[str] = set()
    in_kvm_header = False
    for line in result.stdout.splitlines():
        if marker := LINE_MARKER.match(line):
            in_kvm_header = marker["file"].endswith(KVM_HEADER_SUFFIXES)
        elif in_kvm_header:
            tags.update(f"{m['kind']} {m['tag']}" for m in TAG_DEFINITION.finditer(line))
    return sorted(tags)


def constant_candidates(macros: dict[str, str], ioctl_names: set[str]) -> list[str]:
    """Object-like KVM_* and mmap (MAP_*, MREMAP_*, PROT_*) macros that may be integer constants."""
    return sorted(
        name
        for name in macros
        if (name.startswith(CONSTANT_PREFIXES) or name == "KVMIO")
        and name not in ioctl_names
        and not any(alias.startswith("__KVM_DEPRECATED_") for alias in resolve_alias(name, macros))
    )


def syscall_macros(macros: dict[str, str]) -> list[str]:
    return sorted(name for name in macros if name.startswith(SYSCALL_PREFIX))


def probe_variable(c_type: str) -> str:
    return "probe_object_" + c_type.replace(" ", "_")


def write_probe(
    path: Path,
    ioctls: list[IoctlMacro],
    constants: list[str],
    syscalls: list[str],
    tags: list[str],
) -> list[tuple[str, str]]:
    """Write the probe; return (kind, name) for each droppable line, indexed by line - 1."""
    lines: list[tuple[str, str]] = []
    body: list[str] = []

    def add(kind: str, name: str, text: str) -> None:
        lines.append((kind, name))
        body.append(text)

    add("fixed", "", "#include <stdio.h>")
    for header in ABI_HEADERS:
        add("fixed", "", f"#include <{header}>")
    # One object per type, so that the compiler emits DWARF for the type and all it references.
    for c_type in tags:
        add("type", c_type, f"{c_type} {probe_variable(c_type)};")
    add("fixed", "", "int main(void) {")
    for macro in ioctls:
        add(
            "ioctl",
            macro.name,
            f'printf("ioctl {macro.name} %lu\\n", (unsigned long)({macro.name}));',
        )
    for name in constants:
        # `| 0` rejects pointers, strings and floating values; _Static_assert rejects anything that
        # is not an integer constant expression.
        add(
            "constant",
            name,
            f'_Static_assert((({name}) | 0) || 1, "{name}"); if (({name}) < 0) '
            f'printf("constant {name} %lld\\n", (long long)({name})); else '
            f'printf("constant {name} %llu\\n", (unsigned long long)({name}));',
        )
    for name in syscalls:
        add("syscall", name, f'printf("syscall {name} %ld\\n", (long)({name}));')
    add("fixed", "", "return 0; }")
    path.write_text("\n".join(body) + "\n")
    return lines


def compile_probe(
    workdir: Path,
    ioctls: list[IoctlMacro],
    constants: list[str],
    syscalls: list[str],
    tags: list[str],
) -> tuple[Path, ProbeResults]:
    """Compile the probe, dropping the lines gcc rejects; run it; return object file + values."""
    dropped: set[tuple[str, str]] = set()
    source = workdir / "probe.c"
    while True:
        lines = write_probe(
            source,
            [m for m in ioctls if ("ioctl", m.name) not in dropped],
            [c for c in constants if ("constant", c) not in dropped],
            [s for s in syscalls if ("syscall", s) not in dropped],
            [t for t in tags if ("type", t) not in dropped],
        )
        result = run_gcc([*GCC_FLAGS, "-c", source.name, "-o", "probe.o"], workdir)
        if result.returncode == 0:
            break
        failing = {lines[int(m["line"]) - 1] for m in GCC_ERROR_LINE.finditer(result.stderr)}
        if not failing or any(kind == "fixed" for kind, _ in failing):
            raise RuntimeError(f"probe does not compile:\n{result.stderr}")
        dropped |= failing
    if any(kind in ("type", "syscall") for kind, _ in dropped):
        raise RuntimeError(f"types or system call numbers failed to compile: {dropped}")
    run_gcc(["probe.o", "-o", "probe"], workdir).check_returncode()
    output = subprocess.run([workdir / "probe"], capture_output=True, text=True, check=True)
    values: dict[str, dict[str, int]] = {"ioctl": {}, "constant": {}, "syscall": {}}
    for line in output.stdout.splitlines():
        kind, name, value = line.split()
        values[kind][name] = int(value)
    unavailable = {m.name: m.arg_type_c or "" for m in ioctls if ("ioctl", m.name) in dropped}
    syscall_numbers = {  # by number, as the header lists them
        name.removeprefix(SYSCALL_PREFIX): number
        for name, number in sorted(values["syscall"].items(), key=lambda item: item[1])
    }
    return workdir / "probe.o", ProbeResults(
        values["ioctl"], values["constant"], syscall_numbers, unavailable
    )


def python_dict(name: str, annotation: str, items: Mapping[str, object]) -> list[str]:
    lines = [f"{name}: {annotation} = {{"]
    lines += [f"    {key!r}: {value!r}," for key, value in items.items()]
    return [*lines, "}"]


def render_module(
    version: str,
    classes: list[ClassDef],
    results: ProbeResults,
    ioctls: list[IoctlMacro],
    enumerators: dict[str, int],
) -> str:
    constants = dict(results.constants)
    for name, value in enumerators.items():
        if constants.setdefault(name, value) != value:
            raise RuntimeError(f"{name}: macro value {constants[name]} != enumerator {value}")
    available = [m for m in ioctls if m.name in results.ioctl_numbers]
    lines = [
        f"# GENERATED by tools/gen_abi.py from linux/kvm.h {version}; do not edit.",
        "# Regenerate with: python tools/gen_abi.py",
        '"""ctypes layouts, constants and ioctl numbers of the KVM ABI, and the x86-64 system call',
        'numbers (generated)."""',
        "",
        "import ctypes",
        "",
        f"KERNEL_HEADERS_VERSION = {version!r}",
        *render_classes(classes),
        "",
        "# The C spelling of each class that is a C tag (the others stand for anonymous types).",
        *python_dict(
            "C_TYPE_NAMES", "dict[str, str]", {c.name: c.c_name for c in classes if c.c_name}
        ),
        "",
        "# Integer-valued KVM_* macros and KVM_* enumerators of the kvm headers.",
        *(f"{name} = {value}" for name, value in sorted(constants.items())),
        "",
        *python_dict(
            "IOCTL_NUMBERS",
            "dict[str, int]",
            {m.name: results.ioctl_numbers[m.name] for m in available},
        ),
        "",
        *python_dict(
            "IOCTL_ARG_TYPES", "dict[str, str | None]", {m.name: m.arg_type for m in available}
        ),
        "",
        "# ioctl macros of linux/kvm.h whose argument type x86-64 does not define (declared only",
        "# in another architecture's asm/kvm.h, or nowhere any more): they have no number here.",
        *python_dict("UNAVAILABLE_IOCTLS", "dict[str, str]", results.unavailable_ioctls),
        "",
        "# The x86-64 system call numbers of asm/unistd_64.h (__NR_*), by number.",
        *python_dict("SYSCALL_NUMBERS", "dict[str, int]", results.syscall_numbers),
        "",
    ]
    return "\n".join(lines)


def generate() -> str:
    with tempfile.TemporaryDirectory(prefix="gen_abi_") as tmp:
        workdir = Path(tmp)
        macros = read_macros(workdir)
        ioctls = find_ioctl_macros(macros)
        tags = find_kvm_tags(workdir)
        constants = constant_candidates(macros, {m.name for m in ioctls})
        syscalls = syscall_macros(macros)
        probe_object, results = compile_probe(workdir, ioctls, constants, syscalls, tags)
        # Every struct, union and enum the kvm headers define; that includes kvm_run and every
        # type an ioctl names, and also the ones read from shared memory or other fds
        # (kvm_coalesced_mmio_ring, kvm_dirty_gfn, kvm_stats_header, ...).
        roots = [probe_variable(tag) for tag in tags]
        classes, enumerators = build_classes(probe_object, roots)
        missing = (
            {m.arg_type for m in ioctls if m.name in results.ioctl_numbers and m.arg_type_c}
            - {c.name for c in classes}
            - SCALAR_ARG_TYPES
        )
        if missing:
            raise RuntimeError(f"ioctl argument types not found in the kvm headers: {missing}")
        text = render_module(headers_version(macros), classes, results, ioctls, enumerators)
        verify_rendered(text, classes)
        return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    args.output.write_text(generate())
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
