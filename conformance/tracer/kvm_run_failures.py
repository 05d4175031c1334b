"""Which KVM_RUN calls failed, and with what errno, without stopping at their exits.

A KVM_RUN's exit is in its vCPU's kvm_run page until the thread enters KVM_RUN again, so the
tracer can read it at the thread's next stop instead of at a syscall-exit stop of its own: one
ptrace stop per KVM_RUN instead of two. What that page cannot tell is the call's return value.
KVM's `kvm:kvm_userspace_exit` tracepoint can: it fires in kvm_vcpu_ioctl() after every
kvm_arch_vcpu_ioctl_run() with the exit reason and the result. This module keeps a private
tracefs instance with that one event, filtered in the kernel to failures of the traced tasks
(`errno != 0 && (common_pid == T1 || ...)`, rewritten as tasks come and go: ~20 us a write;
set_event_pid would cost ~30 ms a write here, an RCU grace period), so a healthy run writes
nothing to it. A KVM_RUN with no failure event for its thread returned 0.

KVM_RUN failures that happen before that point (a non-zero argument: EINVAL; a vCPU used from
another address space than its VM's: EIO) fire no event; the recorder does not defer those
calls (kvm_calls.py). The ring buffer is read through trace_pipe without blocking; the event is
written before KVM_RUN returns, so by the thread's next stop it is there to read.

Instances are reused, not removed: removing one costs 35-75 ms here (the kernel waits for an
RCU grace period), as much as a short trace. A tracer takes the first `kvm-conformance-N`
instance it can flock (a killed tracer's lock goes with it), or creates the next one, with a
small ring buffer since only failures land there; it leaves it disabled and unlocked.
`rmdir /sys/kernel/tracing/instances/kvm-conformance-*` removes them.

tracefs is mounted at /sys/kernel/tracing on systemd machines; when it is not and we are root
it is mounted there, as systemd would. Without tracefs, without the event, or without
permission, `start()` says why and the tracer stops at KVM_RUN's exit as before.
"""

from __future__ import annotations

import contextlib
import errno as errno_codes
import fcntl
import os
import re
import subprocess
from collections import deque
from pathlib import Path

_TRACEFS = Path("/sys/kernel/tracing")
_EVENT = Path("events/kvm/kvm_userspace_exit")
_INSTANCE_PREFIX = "kvm-conformance-"
# "<comm>-<tid> [<cpu>] <flags> <timestamp>: kvm_userspace_exit: reason error (22)": comm is at
# most 15 characters and may itself contain '-' and spaces, so the tid is the number before the
# CPU column. The number in parentheses is -errno when the call failed.
_FAILURE_LINE = re.compile(rb"-(\d+) +\[\d+\] .*kvm_userspace_exit: reason \S+ \((\d+)\)")
_READ_SIZE = 65536
# Per CPU. The ring only holds our tasks' failures not read yet: at most one per traced vCPU
# thread, since each thread's are read at its next stop.
_BUFFER_SIZE_KB = 64
# Beyond this many tasks the filter is `errno != 0` alone (a filter is at most a page long) and
# other processes' failures are dropped here instead, as they are read.
_MAX_FILTERED_TIDS = 100


class KvmRunFailures:
    """The failed KVM_RUN calls of one traced program, per thread, oldest first."""

    def __init__(self, instance: Path, lock: int, pipe: int) -> None:
        self.instance = instance
        """The tracefs instance directory this tracer holds."""
        self._lock = lock
        self._pipe = pipe
        self._failures: dict[int, deque[int]] = {}
        self._followed: set[int] = set()
        self._partial = b""

    @classmethod
    def start(cls) -> tuple[KvmRunFailures | None, str | None]:
        """An instance of our own, still disabled; or None and why the tracepoint is unusable."""
        try:
            instance, lock = _claim_instance(tracefs_root() / "instances")
        except OSError as error:
            return None, f"tracefs is not usable ({error.strerror or error})"
        try:
            if not (instance / _EVENT).is_dir():
                raise FileNotFoundError(errno_codes.ENOENT, "no kvm:kvm_userspace_exit event")
            _disable(instance)  # a killed tracer may have left it enabled
            # Resizing the ring, even to its size, costs ~4 ms: only a new instance's is resized
            # (to whole pages: 64 reads back as 67).
            # It reads "1410", or "7 (expanded: 1410)" before first use: the last number counts.
            if int(_read(instance / "buffer_size_kb").split()[-1].strip(")")) > 2 * _BUFFER_SIZE_KB:
                (instance / "buffer_size_kb").write_text(f"{_BUFFER_SIZE_KB}\n")
            pipe = os.open(instance / "trace_pipe", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as error:
            os.close(lock)
            return None, f"kvm:kvm_userspace_exit is not usable ({error.strerror or error})"
        failures = cls(instance, lock, pipe)
        failures._drain()  # drops what a killed tracer left unread (truncating costs ~16 ms)
        return failures, None

    def follow(self, tid: int) -> None:
        """Record the failures of task `tid` from now on."""
        self._followed.add(tid)
        self._write_filter()
        if len(self._followed) == 1:
            (self.instance / _EVENT / "enable").write_text("1\n")

    @property
    def pipe(self) -> int:
        """trace_pipe, non-blocking: the compiled loop reads it too and hands us the bytes."""
        return self._pipe

    def return_value(self, tid: int) -> int:
        """What `tid`'s oldest KVM_RUN not asked about yet returned: 0 or -errno. Call it at a
        stop of `tid`, which then has no KVM_RUN running."""
        self._drain()
        return self.take(tid)

    def take(self, tid: int) -> int:
        """return_value() from what was read so far: for a KVM_RUN the compiled loop finished,
        `tid` having run on since (a later call's failure may be in the pipe by now)."""
        failures = self._failures.get(tid)
        if not failures:
            return 0
        value = failures.popleft()
        if not failures:
            del self._failures[tid]
        return value

    def queued_tids(self) -> list[int]:
        """Tasks with a failure read but not taken yet."""
        return list(self._failures)

    def forget(self, tid: int) -> None:
        """`tid` ended: drop the failures of the exits it took with it, stop following it."""
        self._drain()
        self._failures.pop(tid, None)
        self._followed.discard(tid)
        self._write_filter()

    def close(self) -> None:
        """Disable the event and leave the instance, unlocked, to the next tracer."""
        os.close(self._pipe)
        _disable(self.instance)
        os.close(self._lock)

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self._pipe, _READ_SIZE)
            except BlockingIOError:
                return
            if not chunk:
                return
            self.feed(chunk)

    def feed(self, chunk: bytes) -> None:
        """Bytes read from the pipe. (trace_pipe returns whole lines; a split one is joined.)"""
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            match = _FAILURE_LINE.search(line)
            if match is not None and int(match[1]) in self._followed:
                self._failures.setdefault(int(match[1]), deque()).append(-int(match[2]))

    def _write_filter(self) -> None:
        tids = sorted(self._followed)
        expression = "errno != 0"
        if 0 < len(tids) <= _MAX_FILTERED_TIDS:
            expression += " && (" + " || ".join(f"common_pid == {tid}" for tid in tids) + ")"
        (self.instance / _EVENT / "filter").write_text(f"{expression}\n")


def tracefs_root() -> Path:
    """Where tracefs is, mounted there first when it is not and we may (OSError if not)."""
    if (_TRACEFS / "instances").is_dir():
        return _TRACEFS
    # The only mount this tool ever makes: tracefs at its standard place, as systemd does.
    mounted = subprocess.run(
        ["mount", "-t", "tracefs", "nodev", str(_TRACEFS)], capture_output=True, check=False
    )
    if mounted.returncode != 0 or not (_TRACEFS / "instances").is_dir():
        raise FileNotFoundError(errno_codes.ENOENT, f"tracefs is not mounted at {_TRACEFS}")
    return _TRACEFS


def _claim_instance(instances: Path) -> tuple[Path, int]:
    """The first of our instances no other tracer holds, or a new one; locked (flock)."""
    index = 0
    while True:
        instance = instances / f"{_INSTANCE_PREFIX}{index}"
        with contextlib.suppress(FileExistsError):
            instance.mkdir()
        lock = os.open(instance, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock)
            index += 1
            continue
        return instance, lock


def _disable(instance: Path) -> None:
    (instance / _EVENT / "enable").write_text("0\n")


def _read(path: Path) -> str:
    return path.read_text().strip()
