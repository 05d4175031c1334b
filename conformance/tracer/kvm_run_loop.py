"""The compiled wait loop for KVM_RUN stops (_kvm_run_loop.c), bound with ctypes.

In full mode with one stop per KVM_RUN, Python's own cost per stop (~10 us: waitpid, ptrace
calls, reads, bookkeeping) was what kept the tracer slower than `strace -X verbose`. The C loop
takes over the stops of KVM_RUN calls on vCPUs the session registered, copies kvm_run at each
one, and hands Python records, identical consecutive calls merged into one with a repeat count;
Python decodes each distinct record with the same code as a live stop (RecordedStop serves the
copied bytes). Everything else (every other syscall, signals, new tasks, ends) still goes
through the Python session, unchanged.

The library is built with the package (a setuptools ext-module; see pyproject.toml). When it is
missing, `KvmRunLoop.load()` returns None and the Python loop does the same work, slower.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
from dataclasses import dataclass
from pathlib import Path

from conformance.abi import _generated as abi
from conformance.tracer import ptrace_backend as backend
from conformance.tracer.kvm_calls import KVM_RUN
from conformance.tracer.kvm_run import HEADER_SIZE, PAGE_SIZE, PIO_GUESS

_MAX_HEADER = 1024  # the C file's buffer sizes; checked against the library's record size
_MAX_IO = 4096
_RECORD_CAPACITY = 256
_KVMC_FLUSH = 1
_KVMC_WAIT_ERROR = 2
_RECORD_ADOPTED = 1
_RECORD_CHECK_FAILURE = 2
_RECORD_EXIT_LIVE = 4


_LAYOUT_FIELDS = (
    "header_size",
    "exit_reason",
    "io",
    "io_size",
    "io_count",
    "io_data_offset",
    "exit_io",
    "pio_offset",
    "io_guess",
    "kvm_run",
    "ioctl_nr",
)


class _Layout(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint32) for name in _LAYOUT_FIELDS]


class _Snapshot(ctypes.Structure):
    _fields_ = [
        ("io_length", ctypes.c_uint32),
        ("header", ctypes.c_uint8 * _MAX_HEADER),
        ("io", ctypes.c_uint8 * _MAX_IO),
    ]


class _Record(ctypes.Structure):
    _fields_ = [
        ("tid", ctypes.c_int32),
        ("tgid", ctypes.c_int32),
        ("fd", ctypes.c_int32),
        ("flags", ctypes.c_uint32),
        ("repeat", ctypes.c_uint64),
        ("run_address", ctypes.c_uint64),
        ("entry", _Snapshot),
        ("exit", _Snapshot),
    ]


class _Result(ctypes.Structure):
    _fields_ = [
        ("kind", ctypes.c_int32),
        ("tid", ctypes.c_int32),
        ("status", ctypes.c_int32),
        ("error", ctypes.c_int32),
        ("records", ctypes.c_uint32),
        ("failure_bytes", ctypes.c_uint32),
    ]


Memory = dict[int, bytes]  # address -> the bytes copied there


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One KVM_RUN (or `repeat` identical ones in a row) finished in the C loop."""

    tid: int
    tgid: int
    fd: int
    repeat: int
    adopted: bool  # its entry went through Python (the call that registered the vCPU)
    check_failure: bool  # its errno, if any, is in KvmRunFailures
    exit_live: bool  # its exit is read from the stopped task returned with this batch
    entry: Memory
    exit: Memory


@dataclass(frozen=True, slots=True)
class Waited:
    records: list[RunRecord]
    failure_bytes: bytes  # trace_pipe bytes the loop read, for KvmRunFailures
    stop: tuple[int, int] | None  # (tid, wait status) for the Python session
    error: int  # waitpid's errno (EINTR, ECHILD), else 0


def _library_path() -> Path | None:
    here = Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = here / f"_kvm_run_loop{suffix}"
        if candidate.exists():
            return candidate
    return None


class KvmRunLoop:
    def __init__(self, library: ctypes.CDLL, failure_fd: int) -> None:
        self._library = library
        layout = _Layout(
            header_size=HEADER_SIZE,
            exit_reason=abi.kvm_run.exit_reason.offset,
            io=abi.kvm_run._anon0.offset + abi.kvm_run_anon0.io.offset,
            io_size=abi.kvm_run_anon0_io.size.offset,
            io_count=abi.kvm_run_anon0_io.count.offset,
            io_data_offset=abi.kvm_run_anon0_io.data_offset.offset,
            exit_io=abi.KVM_EXIT_IO,
            pio_offset=abi.KVM_PIO_PAGE_OFFSET * PAGE_SIZE,
            io_guess=PIO_GUESS,
            kvm_run=KVM_RUN & 0xFFFFFFFF,
            ioctl_nr=backend.syscall_number("ioctl"),
        )
        self._pio_offset = layout.pio_offset
        self._context = library.kvmc_new(ctypes.byref(layout), failure_fd, _RECORD_CAPACITY)
        if not self._context:
            raise MemoryError("kvmc_new")
        self._records = ctypes.cast(
            library.kvmc_records(self._context), ctypes.POINTER(_Record * _RECORD_CAPACITY)
        ).contents
        self._failure_bytes = library.kvmc_failure_bytes(self._context)
        self._result = _Result()

    @classmethod
    def load(cls, failure_fd: int) -> KvmRunLoop | None:
        """The loop over this build's library, or None when it was not built."""
        path = _library_path()
        if path is None:
            return None
        library = ctypes.CDLL(str(path), use_errno=True)
        library.kvmc_new.restype = ctypes.c_void_p
        library.kvmc_new.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32)
        library.kvmc_records.restype = ctypes.c_void_p
        library.kvmc_failure_bytes.restype = ctypes.c_void_p
        for name in ("kvmc_records", "kvmc_failure_bytes", "kvmc_free"):
            getattr(library, name).argtypes = (ctypes.c_void_p,)
        for name in ("kvmc_register", "kvmc_adopt"):
            function = getattr(library, name)
            function.argtypes = (ctypes.c_void_p, *(ctypes.c_int,) * 3, ctypes.c_uint64)
        for name in ("kvmc_forget_process", "kvmc_mark_failure", "kvmc_set_signal_fd"):
            getattr(library, name).argtypes = (ctypes.c_void_p, ctypes.c_int)
        library.kvmc_wait.argtypes = (ctypes.c_void_p, ctypes.POINTER(_Result))
        library.kvmc_record_size.restype = ctypes.c_size_t
        if library.kvmc_record_size() != ctypes.sizeof(_Record):
            raise ImportError(f"{path.name}: its record layout is not this module's: rebuild it")
        return cls(library, failure_fd)

    def register(self, tid: int, tgid: int, fd: int, run_address: int) -> bool:
        """Let the loop handle `tid`'s KVM_RUNs on `fd`; False when it has no room."""
        return bool(self._library.kvmc_register(self._context, tid, tgid, fd, run_address) == 0)

    def adopt(self, tid: int, tgid: int, fd: int, run_address: int) -> bool:
        """`tid` runs a KVM_RUN whose entry Python delivered: the loop finishes it."""
        return bool(self._library.kvmc_adopt(self._context, tid, tgid, fd, run_address) == 0)

    def forget_process(self, tgid: int) -> None:
        """A call of process `tgid` may change its fds or mappings: forget its vCPUs."""
        self._library.kvmc_forget_process(self._context, tgid)

    def watch_signals(self, wakeup_fd: int) -> None:
        """The read end of Python's signal wakeup fd: the loop returns when a signal arrives,
        so that Python's handlers run (they only run between bytecodes)."""
        self._library.kvmc_set_signal_fd(self._context, wakeup_fd)

    def mark_failure(self, tid: int) -> None:
        """KvmRunFailures holds a failure of `tid`: its next record must ask for it."""
        self._library.kvmc_mark_failure(self._context, tid)

    def wait(self) -> Waited:
        result = self._result
        kind = self._library.kvmc_wait(self._context, ctypes.byref(result))
        records = [self._record(self._records[index]) for index in range(result.records)]
        failure_bytes = ctypes.string_at(self._failure_bytes, result.failure_bytes)
        if kind == _KVMC_WAIT_ERROR:
            return Waited(records, failure_bytes, None, result.error)
        stop = None if kind == _KVMC_FLUSH else (result.tid, result.status)
        return Waited(records, failure_bytes, stop, 0)

    def close(self) -> None:
        self._library.kvmc_free(self._context)
        self._context = None

    def _record(self, raw: _Record) -> RunRecord:
        flags = raw.flags
        return RunRecord(
            tid=raw.tid,
            tgid=raw.tgid,
            fd=raw.fd,
            repeat=raw.repeat,
            adopted=bool(flags & _RECORD_ADOPTED),
            check_failure=bool(flags & _RECORD_CHECK_FAILURE),
            exit_live=bool(flags & _RECORD_EXIT_LIVE),
            entry={} if flags & _RECORD_ADOPTED else self._memory(raw.run_address, raw.entry),
            exit={} if flags & _RECORD_EXIT_LIVE else self._memory(raw.run_address, raw.exit),
        )

    def _memory(self, run_address: int, snapshot: _Snapshot) -> Memory:
        return {
            run_address: bytes(snapshot.header)[:HEADER_SIZE],
            run_address + self._pio_offset: bytes(snapshot.io)[: snapshot.io_length],
        }
