"""Trace a command into a normalized trace document: the one path from a program to a document.

Every face that traces a program comes through here (`check`'s scenarios, `lint -- CMD`,
`record-trace`, QEMU's references, the pytest plugin): `capture` runs any argv to its end under
ptrace with the Normalizer as the event sink, and records the host it ran on in `source: host:`.

The tracer and the traced program share one CPU (`trace(pin=True)`): the fast placement, about
13 µs per stop against 40-60 µs across two. It also keeps a VMM deterministic that passes
KVM_GET_SUPPORTED_CPUID's entries to KVM_SET_CPUID2 unchanged: those carry the APIC ID of the
CPU that answered (CPUID 1 EBX[31:24], CPUID 0xB EDX).
"""

from __future__ import annotations

import functools
import os
import platform
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

from conformance.model.document import Entry, TraceDocument, Value
from conformance.model.errors import ConformanceError
from conformance.model.events import KvmRunMode
from conformance.normalize.normalizer import Normalizer
from conformance.tracer import TraceOutcome, trace
from conformance.vmm.kvm import Kvm

_PIPE_CAPACITY = 65536  # Linux's default pipe buffer: input written before the program starts


@dataclass(frozen=True, slots=True)
class Capture:
    """A traced program's normalized trace, how it ended, and how long tracing took."""

    document: TraceDocument
    outcome: TraceOutcome
    seconds: float
    output: str = ""  # what it wrote to stdout, when captured (capture_output)
    error_output: str = ""  # what it wrote to stderr, when captured


def capture(
    argv: Sequence[str],
    source: Mapping[str, Value],
    *,
    kvm_run: KvmRunMode = "full",
    stdin: int | None = None,
    stdout: int | None = None,
    stderr: int | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> Capture:
    """Run `argv` to its end under the tracer, tracer and program on one CPU. stdin, stdout,
    stderr: the fds to give it (None: ours, so it reads and writes where we do)."""
    normalizer = Normalizer({**source, "host": host_facts()})
    started = time.monotonic()
    outcome = trace(
        argv,
        normalizer.add,
        kvm_run=kvm_run,
        # One CPU for tracer and program: a ptrace stop costs ~4x less than across two.
        pin=True,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        env=env,
        cwd=cwd,
    )
    seconds = time.monotonic() - started
    return Capture(normalizer.finish(), outcome, seconds)


def capture_output(
    argv: Sequence[str],
    source: Mapping[str, Value],
    *,
    kvm_run: KvmRunMode = "full",
    input: bytes = b"",
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> Capture:
    """`capture`, with `input` as the program's whole stdin and its stdout and stderr kept as
    text: nothing of the program reaches our terminal or pipe, where it would interleave with a
    report. Output goes to files, not pipes, which nobody would drain while the tracer runs."""
    if len(input) > _PIPE_CAPACITY:
        raise ConformanceError(f"{argv[0]}: stdin input over {_PIPE_CAPACITY} bytes")
    with _stdin_holding(input) as stdin, _spooled() as stdout, _spooled() as stderr:
        captured = capture(
            argv,
            source,
            kvm_run=kvm_run,
            stdin=stdin,
            stdout=stdout.fileno(),
            stderr=stderr.fileno(),
            env=env,
            cwd=cwd,
        )
        output, error_output = _text(stdout), _text(stderr)
    return Capture(
        captured.document,
        captured.outcome,
        captured.seconds,
        output=output,
        error_output=error_output,
    )


@contextmanager
def _stdin_holding(data: bytes) -> Iterator[int]:
    """The read end of a pipe that holds `data` and then ends."""
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, data)
        os.close(write_end)
        write_end = -1
        yield read_end
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


@contextmanager
def _spooled() -> Iterator[IO[bytes]]:
    with tempfile.TemporaryFile() as spool:
        yield spool


def _text(spool: IO[bytes]) -> str:
    spool.seek(0)
    return spool.read().decode("utf-8", errors="replace")


@functools.cache
def host_facts() -> Entry:
    """The identity half of `source: host:` (model/host_profile.py adds the answers the
    trace holds): kernel, KVM API, and the CPU as /proc/cpuinfo names it. A trace whose VMM
    asked for the supported CPUID gets vendor, family, model and stepping from there instead.
    """
    facts: Entry = {"kernel": platform.release()}
    with Kvm() as kvm:
        facts["kvm_api"] = kvm.api_version()
    facts.update(_cpu_identity())
    return facts


# /proc/cpuinfo's keys (arch/x86/kernel/cpu/proc.c, show_cpuinfo) and the profile's.
_CPUINFO_KEYS = {
    "model name": "cpu",
    "vendor_id": "vendor",
    "cpu family": "family",
    "model": "model",
    "stepping": "stepping",
}


def _cpu_identity() -> Entry:
    """The first CPU's identity from /proc/cpuinfo ({} without /proc: provenance says less)."""
    found: Entry = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                name = _CPUINFO_KEYS.get(key.strip())
                if not line.strip():
                    break  # the first processor's block ends here
                if name is not None and name not in found:
                    text = value.strip()
                    found[name] = int(text) if text.isdigit() else text
    except OSError:
        return {}
    return found
