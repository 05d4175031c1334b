"""Every KVM_RUN of the traced tasks recorded in the kernel, without a ptrace stop: the eBPF
recorder's maps, its two programs (bpf_programs.py) attached, and what the tracer tells it and
reads from it.

Python tells the programs which tasks are traced (the `tasks` map: one state per task) and
where each vCPU fd's kvm_run is (`vcpus`: (tgid, fd) -> address, whether to copy the ring,
kept current by bpf_vcpu_pages.py); it reads the ring buffer's records and, at a task's stop,
the task's current group (bpf_run_exits.py). The counters of lost records and failed copies
are read at the end: a lost record is an error, never silent.
"""

from __future__ import annotations

import ctypes
import errno as errno_codes
import os
import struct
from dataclasses import dataclass

from conformance.tracer import bpf_sys
from conformance.tracer import ptrace_backend as backend
from conformance.tracer.bpf_layout import (
    COPIED,
    COUNTERS,
    FIRST_RUN,
    O_COUNT,
    O_FLAGS,
    RING,
    STATE_SIZE,
    ExitCopy,
    Group,
    parse,
)
from conformance.tracer.bpf_programs import entry_program, exit_program
from conformance.tracer.errors import TracerError, TracerFailure

# The `vcpus` map: key (tgid, fd), value (kvm_run address, flags: COPIED, RING, FIRST_RUN)
_VCPU_KEY = struct.Struct("<Ii")
_VCPU_VALUE = struct.Struct("<QI4x")
_TASK_KEY = struct.Struct("<I")
_EMPTY_STATE = bytes(STATE_SIZE)
_STATE_CHANGES = struct.Struct(f"<{O_FLAGS}xI{O_COUNT - O_FLAGS - 4}xQ")  # flags, count
_TRACEPOINTS = ("sys_enter", "sys_exit")  # the entry program's, the exit program's
_MAX_TASKS = 1 << 16
_MAX_VCPUS = 1 << 12
# 1 MiB: ~1,400 records of distinct exits (376 bytes each) before the half-full stop. The
# kernel maps the ring's pages in whole, twice, into the tracer: 2 MiB of its RSS (4 MiB made
# the tracer's peak RSS 27 MiB instead of 19).
RING_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class VcpuPage:
    """What the programs are told of a vCPU fd (bpf_vcpu_pages.py): where its kvm_run is
    mapped (None: nowhere yet), whether its VM's coalesced MMIO ring is copied too, and whether
    its VM's guest has not run yet (its first KVM_RUN is stopped: bpf_run_exits.py)."""

    run_address: int | None
    ring: bool
    first_run: bool


class KvmRunRecordsLost(TracerFailure):
    """The eBPF recorder could not keep every KVM_RUN: the trace is incomplete."""


class KvmRunRecorder:
    """The programs attached, their maps, and what the tracer tells them."""

    def __init__(
        self,
        maps: dict[str, int],
        programs: list[int],
        ring: bpf_sys.RingBuffer,
        namespace: tuple[int, int],
    ) -> None:
        self._maps = maps
        self._programs = programs
        self._attachments: list[int] = []
        self._state = ctypes.create_string_buffer(STATE_SIZE)
        self.ring = ring
        self._namespace = namespace

    @classmethod
    def start(cls) -> tuple[KvmRunRecorder | None, str | None]:
        """Maps made and programs verified, not attached yet (attach()); or None and why eBPF
        cannot be used (no bpf(2) rights, a verifier refusal). The ring holds RING_BYTES."""
        ring_bytes = RING_BYTES
        ioctl = backend.syscall_number("ioctl")
        namespace = pid_namespace("self")
        maps: dict[str, int] = {}
        programs: list[int] = []
        try:
            maps["tasks"] = bpf_sys.create_map(
                bpf_sys.MAP_HASH,
                _TASK_KEY.size,
                STATE_SIZE,
                _MAX_TASKS,
                flags=bpf_sys.NO_PREALLOC,
                name="kvmc_tasks",
            )
            maps["vcpus"] = bpf_sys.create_map(
                bpf_sys.MAP_HASH, _VCPU_KEY.size, _VCPU_VALUE.size, _MAX_VCPUS, name="kvmc_vcpus"
            )
            maps["scratch"] = bpf_sys.create_map(
                bpf_sys.MAP_PERCPU_ARRAY, 4, STATE_SIZE, 1, name="kvmc_scratch"
            )
            maps["counters"] = bpf_sys.create_map(
                bpf_sys.MAP_ARRAY, 4, COUNTERS.size, 1, name="kvmc_counters"
            )
            maps["ring"] = bpf_sys.create_map(
                bpf_sys.MAP_RINGBUF, 0, 0, ring_bytes, name="kvmc_ring"
            )
            codes = (
                entry_program(maps, ioctl, namespace),
                exit_program(maps, ioctl, namespace, ring_bytes),
            )
            for tracepoint, code in zip(_TRACEPOINTS, codes, strict=True):
                name = f"kvmc_{tracepoint}"
                programs.append(bpf_sys.load_program(bpf_sys.PROG_RAW_TRACEPOINT, code, name=name))
            ring = bpf_sys.RingBuffer(maps["ring"], ring_bytes)
        except OSError as error:
            for fd in (*programs, *maps.values()):
                os.close(fd)
            return None, _why(error)
        return cls(maps, programs, ring, namespace), None

    def attach(self) -> None:
        """Start recording: the programs on their tracepoints. Done once a traced program opens
        /dev/kvm (bpf_vcpu_pages.py), not before: while attached, every syscall of every task
        takes the kernel's slower path with tracepoints, and attaching right after another
        tracer detached waits for an RCU grace period (~13 ms here)."""
        if self._attachments:
            return
        for program, tracepoint in zip(self._programs, _TRACEPOINTS, strict=True):
            try:
                self._attachments.append(bpf_sys.attach_to_raw_tracepoint(program, tracepoint))
            except OSError as error:
                raise TracerError(f"the eBPF recorder cannot record: {_why(error)}") from error

    # --- what the tracer tells the programs ---------------------------------------------------

    def follow(self, tid: int) -> None:
        """Record task `tid`'s KVM_RUNs from now on (call it while the task is stopped)."""
        if pid_namespace(str(tid)) != self._namespace:
            raise TracerError(
                f"task {tid} runs in a PID namespace of its own: the eBPF recorder cannot name "
                "its KVM_RUN calls (trace it with --no-ebpf)"
            )
        bpf_sys.update(self._maps["tasks"], _TASK_KEY.pack(tid), _EMPTY_STATE)

    def forget(self, tid: int) -> None:
        bpf_sys.delete(self._maps["tasks"], _TASK_KEY.pack(tid))

    def register(self, tgid: int, fd: int, page: VcpuPage) -> None:
        """KVM_RUN on vCPU `fd` in process `tgid` copies the kvm_run at `page.run_address`
        (and the ring page after it, `page.ring`); and stops the task when it is the VM's
        first (`page.first_run`)."""
        flags = (COPIED if page.run_address is not None else 0) | (RING if page.ring else 0)
        flags |= FIRST_RUN if page.first_run else 0
        value = _VCPU_VALUE.pack(page.run_address or 0, flags)
        bpf_sys.update(self._maps["vcpus"], _VCPU_KEY.pack(tgid, fd), value)

    def unregister(self, tgid: int, fd: int) -> None:
        bpf_sys.delete(self._maps["vcpus"], _VCPU_KEY.pack(tgid, fd))

    # --- what they recorded --------------------------------------------------------------------

    def records(self) -> list[Group | ExitCopy]:
        return [parse(raw) for raw in self.ring.records()]

    def take_state(self, tid: int) -> Group | None:
        """Task `tid`'s current group and flags, its state emptied; None when it has neither
        (or is not followed). The task must be stopped (or gone). Asked at every stop: the
        value's buffer is reused and a state left empty is not parsed (~24 us became ~4)."""
        key = _TASK_KEY.pack(tid)
        if not bpf_sys.lookup_into(self._maps["tasks"], key, self._state):
            return None
        if not any(_STATE_CHANGES.unpack_from(self._state)):
            return None
        group = parse(self._state.raw)
        assert isinstance(group, Group)
        bpf_sys.update(self._maps["tasks"], key, _EMPTY_STATE)
        return group

    def counters(self) -> tuple[int, int]:
        """(records lost because the ring buffer was full, kvm_run copies that failed)."""
        raw = bpf_sys.lookup(self._maps["counters"], b"\0\0\0\0", COUNTERS.size)
        lost, unreadable = COUNTERS.unpack(raw or bytes(COUNTERS.size))
        return lost, unreadable

    def close(self) -> None:
        self.ring.close()
        for fd in (*self._attachments, *self._programs, *self._maps.values()):
            os.close(fd)


def pid_namespace(task: str) -> tuple[int, int]:
    """(device, as the kernel numbers it, and inode) of /proc/TASK/ns/pid: how the programs
    name the PID namespace whose task numbers they record (bpf_get_ns_current_pid_tgid)."""
    found = os.stat(f"/proc/{task}/ns/pid")
    return os.major(found.st_dev) << 20 | os.minor(found.st_dev), found.st_ino


def _why(error: OSError) -> str:
    if error.errno in (errno_codes.EPERM, errno_codes.EACCES) and "verifier" not in str(error):
        return f"eBPF is not permitted ({error.strerror}: CAP_BPF and CAP_PERFMON are needed)"
    if error.errno == errno_codes.ENOENT:
        return "the kernel has no sys_enter/sys_exit raw tracepoints"
    return f"eBPF refused the recorder ({error.strerror or error})"
