"""How long is a failure report? Lines and characters per failure block of `check` and `diff`.

Issue 16's goal: any single-field change prints at most 15 lines and 2,000 characters, and no
line is over 200 characters. This makes each kind of change to a copy of the committed
snapshots (or to a subject trace), runs the command line as a user would, and measures what it
prints for the failure, block by block (a block: the lines between two blank lines, after the
scenario lines). It only runs the CLI, so the same script measures an older checkout:

    python tools/report_sizes.py                       # this checkout
    python tools/report_sizes.py --repo /tmp/before    # another one (its own code and files)
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
OTHER_HOST = Path("/work/shared/hosts/intel-xeon/expected")
_SCENARIO_LINE = re.compile(r"^(pass|FAIL|missing|created|updated|unchanged)\s")


@dataclass(frozen=True)
class Change:
    name: str
    scenario: str
    edit: Callable[[str], str]  # the snapshot's text -> the changed text


def _replace_once(old: str, new: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        if text.count(old) < 1:
            raise SystemExit(f"report_sizes: {old!r} not in the snapshot")
        return text.replace(old, new, 1)

    return edit


def _swap_lines(first: str, second: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        lines = text.splitlines(keepends=True)
        a = next(i for i, line in enumerate(lines) if first in line)
        b = next(i for i, line in enumerate(lines) if second in line)
        lines[a], lines[b] = lines[b], lines[a]
        return "".join(lines)

    return edit


def _extra_cpuid_leaf_expected(text: str) -> str:
    """The snapshot lists one CPUID leaf more than the VMM now passes: a missing leaf."""
    start = text.index("req: KVM_SET_CPUID2")
    leaf = "      - {function: 0x40000001, index: 0x0,"
    at = text.index(leaf, start)
    line_end = text.index("\n", at) + 1
    added = text[at:line_end].replace("function: 0x40000001", "function: 0x40000010")
    changed = text[:line_end] + added + text[line_end:]
    nent = changed.index("nent: 75", start)
    return changed[:nent] + "nent: 76" + changed[nent + len("nent: 75") :]


CHANGES = (
    Change(
        "register (KVM_SET_REGS rflags)",
        "hello",
        _replace_once("rip: 0x1000, rflags: 0x2}", "rip: 0x1000, rflags: 0x202}"),
    ),
    Change(
        "slot size (memory_size)",
        "memory-setup",
        _replace_once("memory_size: 0x40000,", "memory_size: 0x80000,"),
    ),
    Change(
        "reorder (two ioctls swapped)",
        "hello",
        _swap_lines("req: KVM_SET_IDENTITY_MAP_ADDR", "req: KVM_SET_TSS_ADDR"),
    ),
    Change("missing CPUID leaf", "hello", _extra_cpuid_leaf_expected),
    Change(
        "extra call (CHECK_EXTENSION)",
        "hello",
        _replace_once(
            "  - {call: ioctl, fd: kvm, req: KVM_CHECK_EXTENSION, arg: KVM_CAP_EXT_CPUID,"
            " out: {ret: 1}}\n",
            "",
        ),
    ),
    Change(
        "missing call (CREATE_IRQCHIP)",
        "memory-setup",
        _replace_once(
            "  - {call: ioctl, fd: vm, req: KVM_SET_USER_MEMORY_REGION",
            "  - {call: ioctl, fd: vm, req: KVM_CREATE_IRQCHIP}\n"
            "  - {call: ioctl, fd: vm, req: KVM_SET_USER_MEMORY_REGION",
        ),
    ),
)


@dataclass(frozen=True)
class Block:
    lines: int
    characters: int
    longest: int


def blocks(output: str) -> list[Block]:
    """The failure blocks of a `check` or `diff` output: its scenario lines and final summary
    line left out, the rest split at blank lines."""
    lines = output.splitlines()
    while lines and _SCENARIO_LINE.match(lines[0]):
        lines = lines[1:]
    if lines and re.match(r"^\d+ scenarios? in ", lines[-1]):
        lines = lines[:-1]
    found: list[Block] = []
    current: list[str] = []
    for line in [*lines, ""]:
        if line.strip():
            current.append(line)
        elif current:
            text = "\n".join(current) + "\n"
            found.append(Block(len(current), len(text), max(len(item) for item in current)))
            current = []
    return found


def _run(repo: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "conformance", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return result.stdout


def _describe(name: str, found: list[Block]) -> str:
    if not found:
        return f"| {name} | (nothing printed) | | |"
    lines = " + ".join(str(block.lines) for block in found)
    characters = " + ".join(f"{block.characters:,}" for block in found)
    longest = max(block.longest for block in found)
    return f"| {name} | {lines} | {characters} | {longest:,} |"


def _show(output: str, show: bool) -> None:
    if show:
        print("\n" + output)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=REPOSITORY, help="checkout to measure")
    parser.add_argument("--other-host", type=Path, default=OTHER_HOST)
    parser.add_argument("--show", action="store_true", help="print each output after its row")
    args = parser.parse_args()
    show: bool = args.show
    repo: Path = args.repo.resolve()
    print("| change | lines per block | characters per block | longest line |")
    print("|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as scratch:
        for number, change in enumerate(CHANGES):
            expected = Path(scratch) / str(number) / "expected"
            shutil.copytree(repo / "expected", expected)
            snapshot = expected / f"{change.scenario}.yaml"
            snapshot.write_text(change.edit(snapshot.read_text()))
            output = _run(repo, "check", "--scenario", change.scenario, "--expected", str(expected))
            print(_describe(f"`check`: {change.name}", blocks(output)), flush=True)
            _show(output, show)
        subject = Path(scratch) / "subject.yaml"
        subject.write_text(
            (repo / "expected" / "qemu-memory-layout.yaml")
            .read_text()
            .replace("memory_size: 0x40000000,", "memory_size: 0x20000000,")
        )
        output = _run(repo, "diff", str(subject), "traces/qemu/memory-1g.yaml")
        print(_describe("`diff`: slot size against QEMU's memory-1g", blocks(output)))
        _show(output, show)
        output = _run(repo, "diff", "expected/hello.yaml", "traces/qemu/setup.yaml")
        print(_describe("`diff`: hello against QEMU's setup (not one field)", blocks(output)))
        _show(output, show)
    if args.other_host.is_dir():
        output = _run(repo, "check", "--expected", str(args.other_host))
        print(_describe("`check` with the other host's snapshots", blocks(output)))
        _show(output, show)
    return 0


if __name__ == "__main__":
    sys.exit(main())
