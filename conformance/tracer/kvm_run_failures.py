"""Which KVM_RUN calls failed, and with what errno, without stopping at their exits.

A KVM_RUN's exit is in its vCPU's kvm_run page until the thread enters KVM_RUN again, so the
tracer can read it at the thread's next stop instead of at a syscall-exit stop of its own: one
ptrace stop per KVM_RUN instead of two. What that page cannot tell is the call's return value.
KVM's `kvm:kvm_userspace_exit` tracepoint can: it fires in kvm_vcpu_ioctl() after every
kvm_arch_vcpu_ioctl_run() with the exit reason and the result. This module keeps a private
tracefs instance with that one event, filtered in the kernel to failures (`errno != 0`) and to
the traced process and its descendants (set_event_pid + event-fork), so a healthy run writes
nothing to it. A KVM_RUN with no failure event for its thread returned 0.

KVM_RUN failures that happen before that point (a non-zero argument: EINVAL; a vCPU used from
another address space than its VM's: EIO) fire no event; the recorder does not defer those
calls (kvm_calls.py). The ring buffer is read through trace_pipe without blocking; the event is
written before KVM_RUN returns, so by the thread's next stop it is there to read.

tracefs is mounted at /sys/kernel/tracing on systemd machines; when it is not and we are root
it is mounted there, as systemd would. Without tracefs, without the event, or without
permission, `start()` says why and the tracer stops at KVM_RUN's exit as before.
"""

from __future__ import annotations

import contextlib
import errno as errno_codes
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


class KvmRunFailures:
    """The failed KVM_RUN calls of one traced program, per thread, oldest first."""

    def __init__(self, instance: Path, pipe: int) -> None:
        self._instance = instance
        self._pipe = pipe
        self._failures: dict[int, deque[int]] = {}
        self._partial = b""

    @classmethod
    def start(cls) -> tuple[KvmRunFailures | None, str | None]:
        """A new, still disabled instance; or None and why the tracepoint cannot be used."""
        try:
            _mount_tracefs_if_needed()
            instances = _TRACEFS / "instances"
            _remove_stale_instances(instances)
            instance = instances / f"{_INSTANCE_PREFIX}{os.getpid()}"
            instance.mkdir(exist_ok=True)
        except OSError as error:
            return None, f"tracefs is not usable ({error.strerror or error})"
        try:
            if not (instance / _EVENT).is_dir():
                raise FileNotFoundError(errno_codes.ENOENT, "no kvm:kvm_userspace_exit event")
            (instance / _EVENT / "filter").write_text("errno != 0\n")
            (instance / "options/event-fork").write_text("1\n")
            pipe = os.open(instance / "trace_pipe", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as error:
            _remove_instance(instance)
            return None, f"kvm:kvm_userspace_exit is not usable ({error.strerror or error})"
        return cls(instance, pipe), None

    def follow(self, pid: int) -> None:
        """Record the failures of `pid` and of every task it creates from now on."""
        (self._instance / "set_event_pid").write_text(f"{pid}\n")
        (self._instance / _EVENT / "enable").write_text("1\n")

    def return_value(self, tid: int) -> int:
        """What `tid`'s oldest KVM_RUN not asked about yet returned: 0 or -errno."""
        self._drain()
        failures = self._failures.get(tid)
        if not failures:
            return 0
        value = failures.popleft()
        if not failures:
            del self._failures[tid]
        return value

    def forget(self, tid: int) -> None:
        """`tid` ended: drop the failures of the exits it took with it."""
        self._drain()
        self._failures.pop(tid, None)

    def close(self) -> None:
        os.close(self._pipe)
        _remove_instance(self._instance)

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self._pipe, _READ_SIZE)
            except BlockingIOError:
                return
            if not chunk:
                return
            lines = (self._partial + chunk).split(b"\n")
            self._partial = lines.pop()
            for line in lines:
                match = _FAILURE_LINE.search(line)
                if match is not None:
                    tid, errno = int(match[1]), int(match[2])
                    self._failures.setdefault(tid, deque()).append(-errno)


def _mount_tracefs_if_needed() -> None:
    if (_TRACEFS / "instances").is_dir():
        return
    # The only mount this tool ever makes: tracefs at its standard place, as systemd does.
    mounted = subprocess.run(
        ["mount", "-t", "tracefs", "nodev", str(_TRACEFS)], capture_output=True, check=False
    )
    if mounted.returncode != 0 or not (_TRACEFS / "instances").is_dir():
        raise FileNotFoundError(errno_codes.ENOENT, f"tracefs is not mounted at {_TRACEFS}")


def _remove_stale_instances(instances: Path) -> None:
    """Instances left by tracers that were SIGKILLed (a live tracer's is left alone)."""
    for instance in instances.glob(f"{_INSTANCE_PREFIX}*"):
        owner = instance.name.removeprefix(_INSTANCE_PREFIX)
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            _remove_instance(instance)


def _remove_instance(instance: Path) -> None:
    with contextlib.suppress(OSError):  # already gone, or still open by a reader: harmless
        (instance / _EVENT / "enable").write_text("0\n")
    with contextlib.suppress(OSError):
        instance.rmdir()
