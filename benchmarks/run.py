"""What tracing costs, measured side by side in one run: native, strace three ways, ours three ways.

    python benchmarks/run.py                          # the whole table, then tracer memory
    python benchmarks/run.py --subset tracer-overhead # native / strace -f / -X verbose / ours full
    python benchmarks/run.py --subset ours --repetitions 7 --no-memory  # ours 4 ways vs native

Ours runs four ways: full mode with the eBPF recorder (KVM_RUN unstopped, every call recorded
in the kernel), full mode with a stop per KVM_RUN taken by the compiled loop (`--no-ebpf`, the
fallback), summary and off. Every (workload, tracer) pair runs in both CPU placements: "same
CPU" (tracer and traced program on one CPU) and "different CPUs" (tracer on one, program on
the other). A ptrace stop is two
context switches, which cost ~4x more across CPUs here, so one placement alone would mislead.
The placement is set the same way for every row: the tracer under `taskset -c T`, the program
under `taskset -c W` (so strace and ours also trace one short-lived taskset exec). Rows are
interleaved within each repetition so that a noisy moment hits all of them; the table shows
the median wall time, the spread (min-max), the ratio of medians to native and, for the
workloads that run a guest, what tracing adds per KVM_RUN in microseconds ((traced - native) /
KVM_RUN calls). A run that fails or passes RUN_TIMEOUT_SECONDS is shown as such in its cell; the
others still make the table.

Workloads: `true` (no KVM at all: each tracer's own start-up cost, which the short workloads
carry whole), `hello` (one vCPU, 48 exits, a few dozen setup ioctls), `exits-100k` (100,000
port-IO exits; run through exits_guest.py, whose time limit suits a slow tracer), and QEMU
`-S` setup (~185 KVM ioctls on two threads, then `quit` on the monitor).

A second table times exits-100k once more by the VMM itself (exits_guest.py reports its own run,
from its first line to the guest's end): what tracing costs the VMM's run, without the start-up
of the tracer or of either interpreter; a third gives the CPU seconds the VMM spent in that run
(user and system: KVM_RUN's kernel work and the eBPF recorder's programs included), which the
other load of a shared host disturbs less than wall time.

A third table takes our start-up apart, on one CPU, layer by layer (each row includes the one
above): the interpreter, python-ptrace's import, everything `trace` imports, then a whole
`trace -- true`; and the Python VMM running hello, native and under `off`, whose difference
beyond `trace -- true` is the ptrace stops of the VMM's own start-up. Below it, the budgets
the issue's two whole-command goals leave, from this run's medians.

Tracer memory: tracer_rss.py traces the exits guest in a fresh process and reports its peak
RSS: full mode at 10k and at 1M exits (every one decoded), summary mode at 1M. The integration
test test_tracer_memory.py checks the plain path, where each exit is an event of its own, from
10k to 100k exits.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from exits_guest import VMM_CPU_MARK, VMM_RUN_MARK

_HERE = Path(__file__).resolve().parent
_PYTHON = sys.executable
_QEMU = "qemu-system-x86_64"
_STRACE_OUT = ["-o", os.devnull]
_QEMU_SETUP = (
    _QEMU, "-accel", "kvm", "-m", "1G", "-nographic", "-nodefaults", "-S", "-monitor", "stdio",
)  # fmt: skip


@dataclass(frozen=True)
class Workload:
    name: str
    argv: tuple[str, ...]
    kvm_runs: int = 0  # KVM_RUN calls it makes: the per-call cost column
    stdin: bytes = b""
    repetitions: int = 3
    # For tracers that stop at every KVM_RUN (strace, ours full), when that costs too much.
    stopping_repetitions: int | None = None


@dataclass(frozen=True)
class Tracer:
    name: str
    argv: tuple[str, ...]  # prefix before the program's argv; () runs it untraced
    stops_at_kvm_run: bool = True


def _ours(mode: str, *, ebpf: bool = True) -> Tracer:
    name, options = f"ours {mode}", ["--kvm-run", mode]
    if mode == "full":
        name += " (ebpf)" if ebpf else " (loop)"
        options += [] if ebpf else ["--no-ebpf"]
    return Tracer(
        name,
        (_PYTHON, "-m", "conformance", "trace", *options, "-o", os.devnull, "--"),
        stops_at_kvm_run=mode == "full" and not ebpf,
    )


WORKLOADS = (
    # The fixed cost of each tracer: starting it (ours: Python and its imports, ~0.1 s here).
    Workload("startup (true)", ("true",)),
    Workload("hello", (_PYTHON, "-m", "conformance", "run", "hello"), kvm_runs=48),
    # The rows that stop at each of the 100k KVM_RUNs take 4-30 s each here (~75 s a
    # repetition over both placements), so they run once and the whole table stays near
    # 3 minutes; native, summary and off (the 1.05x goal) run three times.
    Workload(
        "exits-100k",
        (_PYTHON, str(_HERE / "exits_guest.py"), "100000"),
        kvm_runs=100_001,
        stopping_repetitions=1,
    ),
    Workload("QEMU -S", _QEMU_SETUP, stdin=b"quit\n"),
)
TRACERS = (
    Tracer("native", (), stops_at_kvm_run=False),
    Tracer("strace -f", ("strace", "-f", *_STRACE_OUT)),
    Tracer("strace -f --seccomp-bpf", ("strace", "-f", "--seccomp-bpf", *_STRACE_OUT)),
    Tracer("strace -f -X verbose", ("strace", "-f", "-X", "verbose", *_STRACE_OUT)),
    _ours("full"),
    _ours("full", ebpf=False),
    _ours("summary"),
    _ours("off"),
)
SUBSETS = {
    "all": tuple(tracer.name for tracer in TRACERS),
    "tracer-overhead": (
        "native", "strace -f", "strace -f -X verbose", "ours full (ebpf)", "ours full (loop)",
    ),
    # issue 17's goals: ours four ways against native, without strace's slow rows
    "ours": ("native", "ours full (ebpf)", "ours full (loop)", "ours summary", "ours off"),
}  # fmt: skip
# A run taking longer is stopped and shown as such (issue 17: one 30 s row lost a whole run).
RUN_TIMEOUT_SECONDS = 120


@dataclass
class Cell:
    seconds: list[float] = field(default_factory=list)
    # exits-100k: the VMM's own run (exits_guest.py's report), without any start-up, in wall
    # and in CPU seconds
    vmm_seconds: list[float] = field(default_factory=list)
    vmm_cpu_seconds: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # runs that timed out or failed

    @property
    def median(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds else None

    def vmm_median(self, cpu: bool) -> float | None:
        runs = self.vmm_cpu_seconds if cpu else self.vmm_seconds
        return statistics.median(runs) if runs else None


def shown(runs: Sequence[float], failures: Sequence[str]) -> str:
    """`median (min-max)` of the runs that ended, and what became of the others."""
    if not runs:
        return failures[0] if failures else "-"
    spread = f"{min(runs):.2f}-{max(runs):.2f}" if len(runs) > 1 else "1 run"
    lost = f", {len(failures)} {failures[0]}" if failures else ""
    return f"{statistics.median(runs):.2f} ({spread}{lost})"


def ratio(value: float | None, native: float | None) -> str:
    return f"{value / native:.2f}" if value is not None and native else "-"


def per_call_us(value: float | None, native: float | None, calls: int) -> str:
    """What tracing adds per KVM_RUN, in microseconds."""
    if value is None or native is None or not calls:
        return "-"
    return f"{1e6 * (value - native) / calls:.2f}"


def placements() -> dict[str, tuple[int, int]]:
    """Placement name -> (tracer CPU, program CPU)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("needs two CPUs to compare placements")
    return {"same CPU": (cpus[0], cpus[0]), "different CPUs": (cpus[0], cpus[1])}


def command(tracer: Tracer, workload: Workload, tracer_cpu: int, program_cpu: int) -> list[str]:
    program = ["taskset", "-c", str(program_cpu), *workload.argv]
    if not tracer.argv:
        return program
    return ["taskset", "-c", str(tracer_cpu), *tracer.argv, *program]


class RunFailed(Exception):
    """A measured command that timed out or failed: its cell says so, the table goes on."""


def time_once(argv: Sequence[str], stdin: bytes) -> tuple[float, dict[str, float]]:
    """Wall seconds of the command, and the VMM's own run (VMM_RUN_MARK, VMM_CPU_MARK) if it
    reported one. Raises
    RunFailed when it passes RUN_TIMEOUT_SECONDS or ends with another status than 0 or 1."""
    start = time.perf_counter()
    try:
        completed = subprocess.run(argv, input=stdin, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, check=False,
                                   timeout=RUN_TIMEOUT_SECONDS)  # fmt: skip
    except subprocess.TimeoutExpired:
        print(f"timed out after {RUN_TIMEOUT_SECONDS} s: {' '.join(argv)}", file=sys.stderr)
        raise RunFailed(f"timed out ({RUN_TIMEOUT_SECONDS} s)") from None
    seconds = time.perf_counter() - start
    # exits_guest.py ends with the guest's debug-exit status 1; the others with 0.
    if completed.returncode not in (0, 1):
        print(f"{' '.join(argv)} failed ({completed.returncode}):\n"
              f"{completed.stderr.decode(errors='replace')}", file=sys.stderr)  # fmt: skip
        raise RunFailed(f"failed ({completed.returncode})")
    reports = {}
    for line in completed.stderr.decode(errors="replace").splitlines():
        for mark in (VMM_RUN_MARK, VMM_CPU_MARK):
            if line.startswith(mark):
                reports[mark] = float(line.removeprefix(mark))
    return seconds, reports


def measure(tracers: Sequence[Tracer], repetitions: int | None) -> dict[tuple[str, str, str], Cell]:
    cells: dict[tuple[str, str, str], Cell] = {}
    where = placements()
    for workload in WORKLOADS:
        for repetition in range(repetitions or workload.repetitions):
            for placement, (tracer_cpu, program_cpu) in where.items():
                for tracer in tracers:
                    limit = workload.stopping_repetitions if tracer.stops_at_kvm_run else None
                    if repetitions is None and limit is not None and repetition >= limit:
                        continue
                    argv = command(tracer, workload, tracer_cpu, program_cpu)
                    cell = cells.setdefault((workload.name, tracer.name, placement), Cell())
                    try:
                        seconds, reports = time_once(argv, workload.stdin)
                    except RunFailed as failure:
                        cell.failures.append(str(failure))
                        continue
                    cell.seconds.append(seconds)
                    if VMM_RUN_MARK in reports:
                        cell.vmm_seconds.append(reports[VMM_RUN_MARK])
                    if VMM_CPU_MARK in reports:
                        cell.vmm_cpu_seconds.append(reports[VMM_CPU_MARK])
    return cells


def table(cells: dict[tuple[str, str, str], Cell], tracers: Sequence[Tracer]) -> list[str]:
    names = list(placements())
    header = "| workload | tracer |" + "".join(
        f" {name}: median s (min-max) | x native | us per KVM_RUN |" for name in names
    )
    lines = [header, "|---|---|" + "---:|---:|---:|" * len(names)]
    for workload in WORKLOADS:
        for tracer in tracers:
            row = f"| {workload.name} | {tracer.name} |"
            for placement in names:
                cell = cells[(workload.name, tracer.name, placement)]
                native = cells[(workload.name, "native", placement)].median
                row += f" {shown(cell.seconds, cell.failures)} | {ratio(cell.median, native)} |"
                row += f" {per_call_us(cell.median, native, workload.kvm_runs)} |"
            lines.append(row)
    return lines


def vmm_run_table(
    cells: dict[tuple[str, str, str], Cell], tracers: Sequence[Tracer], *, cpu: bool
) -> list[str]:
    """exits-100k once more, timed by the VMM itself: what tracing costs its run, start-ups
    (the tracer's, and the interpreter's of both) left out; in wall seconds, or (`cpu`) in the
    CPU seconds the VMM itself spent, which another program's load on the host changes less."""
    names = list(placements())
    workload = next(w for w in WORKLOADS if w.name == "exits-100k")
    title = "the VMM's own CPU time" if cpu else "the VMM's own run"
    header = f"| exits-100k, {title} |" + "".join(
        f" {name}: median s (min-max) | x native | us per KVM_RUN |" for name in names
    )
    lines = [header, "|---|" + "---:|---:|---:|" * len(names)]
    for tracer in tracers:
        row = f"| {tracer.name} |"
        for placement in names:
            cell = cells[(workload.name, tracer.name, placement)]
            native = cells[(workload.name, "native", placement)].vmm_median(cpu)
            median = cell.vmm_median(cpu)
            row += f" {shown(cell.vmm_cpu_seconds if cpu else cell.vmm_seconds, cell.failures)} |"
            row += f" {ratio(median, native)} | {per_call_us(median, native, workload.kvm_runs)} |"
        lines.append(row)
    return lines


# Our start-up, layer by layer: (name, argv), each row doing what the row above does and more.
STARTUP_LAYERS = (
    ("python -c pass: the interpreter", (_PYTHON, "-c", "pass")),
    ("+ import ptrace.binding (python-ptrace)", (_PYTHON, "-c", "import ptrace.binding")),
    ("+ everything `trace` imports",
     (_PYTHON, "-c", "import ptrace.binding, conformance.cli.trace")),
    ("+ filter, fork, exec, exit: ours off -- true", (*_ours("off").argv, "true")),
)  # fmt: skip
# A short Python VMM run (hello: 48 exits), native and traced: what tracing adds beyond
# `trace -- true` is the ptrace stops of the VMM's own start-up (its imports' openat, mmap...).
_HELLO = (_PYTHON, "-m", "conformance", "run", "hello")
STARTUP_VMM = (
    ("the Python VMM runs hello: native", _HELLO),
    ("the same: ours off", (*_ours("off").argv, *_HELLO)),
)
_STARTUP_REPETITIONS = 9
_GOAL_X_NATIVE = 1.05  # issue 8's bound for summary and off on exits-100k


def startup_medians(cpu: int) -> list[float]:
    """Median wall milliseconds of each STARTUP_LAYERS and STARTUP_VMM row, rows interleaved,
    every one on `cpu`."""
    rows = (*STARTUP_LAYERS, *STARTUP_VMM)
    runs: list[list[float]] = [[] for _ in rows]
    for _ in range(_STARTUP_REPETITIONS):
        for row, (_name, argv) in enumerate(rows):
            try:
                seconds, _reports = time_once(["taskset", "-c", str(cpu), *argv], b"")
            except RunFailed:
                continue
            runs[row].append(1000 * seconds)
    return [statistics.median(milliseconds) if milliseconds else float("nan")
            for milliseconds in runs]  # fmt: skip


def startup_table(medians: Sequence[float], cells: dict[tuple[str, str, str], Cell]) -> list[str]:
    layers, (native, traced) = medians[: len(STARTUP_LAYERS)], medians[len(STARTUP_LAYERS) :]
    lines = ["| our start-up, one CPU | median ms | added ms |", "|---|---:|---:|"]
    for row, (name, _argv) in enumerate(STARTUP_LAYERS):
        added = f"{layers[row] - layers[row - 1]:.0f}" if row else "-"
        lines.append(f"| {name} | {layers[row]:.0f} | {added} |")
    for (name, _argv), milliseconds in zip(STARTUP_VMM, (native, traced), strict=True):
        lines.append(f"| {name} | {milliseconds:.0f} | - |")
    stops = traced - native - layers[-1]
    lines.append(f"| its start-up's stops: off - native - `off -- true` | - | {stops:.0f} |")
    exits_native = cells[("exits-100k", "native", "same CPU")].median
    qemu_native = cells[("QEMU -S", "native", "same CPU")].median
    qemu_strace = cells[("QEMU -S", "strace -f -X verbose", "same CPU")].median
    if exits_native is None or qemu_native is None or qemu_strace is None:
        return lines
    lines += [
        "",
        f"Budgets on one CPU: exits-100k at {_GOAL_X_NATIVE}x native leaves "
        f"{1000 * (_GOAL_X_NATIVE - 1) * exits_native:.0f} ms "
        f"over its {exits_native:.2f} s; QEMU -S under strace -f -X verbose takes "
        f"{1000 * (qemu_strace - qemu_native):.0f} ms more than native.",
    ]
    return lines


def tracer_memory() -> list[str]:
    probe = [_PYTHON, str(_HERE / "tracer_rss.py")]
    runs: tuple[tuple[str, int, list[str]], ...] = (
        ("full", 10_000, []), ("full", 1_000_000, []), ("full", 10_000, ["--no-ebpf"]),
        ("full", 1_000_000, ["--no-ebpf"]), ("summary", 1_000_000, []),
    )  # fmt: skip
    lines = [
        "| mode | exits | KVM_RUN calls decoded | tracer peak RSS (MiB) |",
        "|---|---:|---:|---:|",
    ]
    for mode, exits, options in runs:
        output = subprocess.run(
            [*probe, mode, str(exits), *options], check=True, capture_output=True, text=True
        )
        result = json.loads(output.stdout)
        decoded = f"{result['kvm_run_calls']:,}" if mode == "full" else "-"
        name = mode if mode != "full" else f"full ({'loop' if options else 'ebpf'})"
        lines.append(f"| {name} | {exits:,} | {decoded} | {result['peak_mib']:.1f} |")
    return lines


def machine() -> str:
    model = "unknown CPU"
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    qemu = subprocess.run([_QEMU, "--version"], capture_output=True, text=True, check=True)
    strace = subprocess.run(["strace", "-V"], capture_output=True, text=True, check=True)
    return (
        f"{model}, {os.cpu_count()} cores, Linux {platform.release()}, "
        f"{qemu.stdout.splitlines()[0]}, {strace.stdout.splitlines()[0]}, "
        f"Python {platform.python_version()}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subset", choices=tuple(SUBSETS), default="all")
    parser.add_argument("--repetitions", type=int, help="for every row (default: 3; 1 for the "
                        "rows that stop at each of exits-100k's KVM_RUNs)")  # fmt: skip
    parser.add_argument("--no-memory", action="store_true", help="skip the tracer RSS runs")
    arguments = parser.parse_args(argv)
    for tool in ("strace", "taskset", _QEMU):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found")
    tracers = [tracer for tracer in TRACERS if tracer.name in SUBSETS[arguments.subset]]
    # An installed package runs from byte code (pip compiles it at install time). Compile the
    # tree once so that neither our tracer nor the Python VMM pays for compiling its modules on
    # every start where PYTHONDONTWRITEBYTECODE keeps Python from caching them.
    compileall.compile_dir(_HERE.parent / "conformance", quiet=1)
    started = time.perf_counter()
    cells = measure(tracers, arguments.repetitions)
    print(f"Machine: {machine()}")
    print()
    print("\n".join(table(cells, tracers)))
    print()
    print("\n".join(vmm_run_table(cells, tracers, cpu=False)))
    print()
    print("\n".join(vmm_run_table(cells, tracers, cpu=True)))
    if arguments.subset == "all":
        print()
        print("\n".join(startup_table(startup_medians(placements()["same CPU"][0]), cells)))
    if arguments.subset == "all" and not arguments.no_memory:
        print()
        print("\n".join(tracer_memory()))
    print()
    print(f"benchmark wall time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
