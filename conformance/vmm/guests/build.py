"""Assembles guest images from their ``.S`` sources with GNU as, ld and objcopy.

``build(name, **defsyms)`` returns the raw bytes of one image, built in a temporary directory;
``python -m conformance.vmm.guests.build`` rewrites every committed ``<name>.bin`` beside its
source.  Only building needs the toolchain: at run time the VMM loads the committed bytes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from conformance.vmm.guests._catalog import GUESTS, GuestBuildError, lookup

GUEST_DIR = Path(__file__).resolve().parent

# A source marks a constant a build may override with `.ifndef NAME` around its default.
_OVERRIDABLE = re.compile(r"^\s*\.ifndef\s+(\w+)", re.MULTILINE)


def source_path(name: str) -> Path:
    """The assembly source of guest ``name``."""
    return GUEST_DIR / f"{lookup(name).name}.S"


def binary_path(name: str) -> Path:
    """Where the committed image of guest ``name`` lives."""
    return GUEST_DIR / f"{lookup(name).name}.bin"


def overridable_symbols(name: str) -> frozenset[str]:
    """The constants of guest ``name`` that ``build`` accepts as keyword arguments."""
    return frozenset(_OVERRIDABLE.findall(source_path(name).read_text()))


def build(name: str, **defsyms: int) -> bytes:
    """Assemble guest ``name``, with each keyword defined as an assembler symbol."""
    spec = lookup(name)
    unknown = sorted(set(defsyms) - overridable_symbols(name))
    if unknown:
        raise GuestBuildError(
            f"{name} has no overridable constant {', '.join(unknown)} "
            f"(it has: {', '.join(sorted(overridable_symbols(name))) or 'none'})"
        )
    long_mode = spec.mode == "long"
    symbol_args = [arg for sym, value in defsyms.items() for arg in ("--defsym", f"{sym}={value}")]
    with tempfile.TemporaryDirectory(prefix=f"guest-{name}-") as tmp:
        obj, elf, raw = (Path(tmp) / f"{name}.{ext}" for ext in ("o", "elf", "bin"))
        _run(
            "as",
            "--64" if long_mode else "--32",
            # uart.inc, which the guests .include, sits beside them.
            "-I",
            str(source_path(name).parent),
            *symbol_args,
            "-o",
            str(obj),
            str(source_path(name)),
        )
        _run(
            "ld",
            "-m",
            "elf_x86_64" if long_mode else "elf_i386",
            f"-Ttext={spec.link_address:#x}",
            "-o",
            str(elf),
            str(obj),
        )
        # Every guest keeps code and data in .text; the image is exactly that section.
        _run("objcopy", "-O", "binary", "-j", ".text", str(elf), str(raw))
        return raw.read_bytes()


def _run(tool: str, *args: str) -> None:
    executable = shutil.which(tool)
    if executable is None:
        raise GuestBuildError(f"building guest images needs {tool!r} (GNU binutils) on PATH")
    # A fixed environment keeps the output independent of the caller's locale and of
    # variables such as LDEMULATION.
    result = subprocess.run(
        [executable, *args], capture_output=True, text=True, check=False, env={"LC_ALL": "C"}
    )
    if result.returncode != 0:
        raise GuestBuildError(f"{tool} failed ({result.returncode}): {result.stderr.strip()}")


def main() -> None:
    """Rewrite every committed image from its source."""
    for name in GUESTS:
        image = build(name)
        binary_path(name).write_bytes(image)
        print(f"{binary_path(name)}: {len(image)} bytes")


if __name__ == "__main__":
    main()
