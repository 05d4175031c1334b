"""Record QEMU under the tracer: the reference traces (conformance/qemu/references/) and their
provenance.

QEMU runs with address space randomization off (`setarch --addr-no-randomize`) and pinned to one
CPU with its tracer. Neither changes what QEMU asks of KVM; both make what varies by chance
vary less: the offsets at which QEMU aligns RAM blocks inside its reservations follow from where
the kernel placed them, and KVM_GET_SUPPORTED_CPUID answers with the APIC ID of the CPU the call
ran on. What still varies (clocks, uninitialized padding) is not a VMM's decision: every
comparison leaves it out (abi/not_decisions.py), and says what it left out on request.
"""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from conformance.model.document import Entry, TraceDocument, Value
from conformance.model.errors import ConformanceError
from conformance.normalize.capture import host_facts
from conformance.normalize.normalizer import Normalizer
from conformance.qemu.scenarios import QEMU_APT_PACKAGE, QEMU_BINARY, QemuScenario
from conformance.tracer import trace

NO_ASLR = ("setarch", "x86_64", "--addr-no-randomize")
_ERROR_LINES_SHOWN = 10


class QemuMissingError(ConformanceError):
    """No QEMU binary to record with."""


class QemuRunError(ConformanceError):
    """QEMU did not start, or ended otherwise than its scenario does."""


@dataclass(frozen=True)
class QemuRecording:
    document: TraceDocument
    log: str  # QEMU's stdout and stderr, labelled
    seconds: float


def find_qemu(qemu: str | None) -> str:
    """The QEMU binary to run: `qemu` (a path or a name on PATH), by default qemu-system-x86_64."""
    wanted = qemu or QEMU_BINARY
    found = shutil.which(wanted)
    if found is None:
        raise QemuMissingError(
            f"{wanted}: not found; install QEMU with `apt-get install {QEMU_APT_PACKAGE}` "
            "or name a binary with --qemu PATH"
        )
    return found


def qemu_version(qemu: str) -> str:
    try:
        answer = subprocess.run(
            [qemu, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError as error:
        raise QemuRunError(f"{qemu} --version: {error.strerror}") from None
    first_line = answer.stdout.strip().splitlines()[:1]
    if answer.returncode != 0 or not first_line:
        raise QemuRunError(f"{qemu} --version failed: {answer.stderr.strip()}")
    return first_line[0]


def record_qemu(scenario: QemuScenario, qemu: str) -> QemuRecording:
    """Run `scenario` on `qemu` under the tracer; QemuRunError unless it ends as it should."""
    argv = scenario.argv(qemu)
    source: Entry = {
        "tool": "qemu",
        "scenario": scenario.name,
        "qemu": {"path": qemu, "version": qemu_version(qemu)},
        "argv": list[Value](_provenance(argv)),
        "recorded": datetime.date.today().isoformat(),
        "recorded_with": f"{' '.join(NO_ASLR)}, pinned to one CPU",
        "host": host_facts(),
    }
    normalizer = Normalizer(source)
    started = time.monotonic()
    with _captured() as (stdin, stdout, stderr):
        os.write(stdin.write_end, scenario.monitor_input)
        stdin.close_write_end()
        outcome = trace(
            [*NO_ASLR, *argv],
            normalizer.add,
            # One CPU: KVM_GET_SUPPORTED_CPUID's APIC IDs (which QEMU rewrites only partly) and
            # the timing of QEMU's threads then stay the same from one recording to the next.
            pin=True,
            stdin=stdin.read_end,
            stdout=stdout.fileno(),
            stderr=stderr.fileno(),
        )
        output, errors = _read(stdout), _read(stderr)
    seconds = time.monotonic() - started
    if outcome.exit_status != scenario.expected_status or not outcome.opened_kvm:
        shown = "\n".join(errors.strip().splitlines()[-_ERROR_LINES_SHOWN:]) or "(no output)"
        raise QemuRunError(
            f"QEMU ({scenario.name}) exited with status {outcome.exit_status}, expected "
            f"{scenario.expected_status}; its stderr:\n{shown}"
        )
    document = normalizer.finish()
    document.source["exit_status"] = outcome.exit_status
    if scenario.monitor_input == b"":  # the guest's serial port is QEMU's stdout
        document.source["serial_output"] = output
    log = f"$ {' '.join(_provenance(argv))}\n--- stdout ---\n{output}--- stderr ---\n{errors}"
    return QemuRecording(document, log, seconds)


def _provenance(argv: list[str]) -> list[str]:
    """The command line as provenance: a path inside the checkout it was recorded in is
    written relative to the repository root, so that the reference is the same from any
    checkout."""
    root = Path(__file__).resolve().parents[2]
    return [_relative_to(root, argument) for argument in argv]


def _relative_to(root: Path, argument: str) -> str:
    path = Path(argument)
    if path.is_absolute() and path.resolve().is_relative_to(root):
        return str(path.resolve().relative_to(root))
    return argument


class _Pipe:
    def __init__(self) -> None:
        self.read_end, self.write_end = os.pipe()

    def close_write_end(self) -> None:
        if self.write_end >= 0:
            os.close(self.write_end)
            self.write_end = -1

    def close(self) -> None:
        self.close_write_end()
        os.close(self.read_end)


@contextmanager
def _captured() -> Iterator[tuple[_Pipe, IO[bytes], IO[bytes]]]:
    """QEMU's stdin (a pipe holding the monitor commands) and two files for its output: files,
    not pipes, because nobody would drain a pipe while the tracer runs."""
    stdin = _Pipe()
    try:
        with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
            yield stdin, stdout, stderr
    finally:
        stdin.close()


def _read(stream: IO[bytes]) -> str:
    stream.seek(0)
    return stream.read().decode("utf-8", errors="replace")
