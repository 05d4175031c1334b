"""Normalization: raw tracer events -> roles, region names, symbolic flags, the relevance slice.

Events are built from realistic values: the QEMU strace of the seed article (a 1 GiB + 2 MiB
PROT_NONE reservation at 0x7768b3e00000 with 1 GiB of RAM MAP_FIXED inside it, registered as
slot 0), a vCPU thread running a serial-port guest, and a VMM that forks.
"""

from __future__ import annotations

import errno
import itertools
import mmap
import os
from collections.abc import Iterable, Iterator

from conformance.abi import _generated as kvm_abi
from conformance.abi.ioctls import IOCTLS
from conformance.model import events
from conformance.model.document import Entry, Hex, Value
from conformance.normalize.normalizer import UNMAPPED, Normalizer
from conformance.snapshot.store import dump_document

RESERVATION = 0x7768B3E00000
RAM_SIZE = 1 << 30
RESERVATION_SIZE = RAM_SIZE + (2 << 20)
KVM_RUN_PAGE = 0x7F11C0A4D000
ANONYMOUS_PRIVATE = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
PROT_NONE = 0  # no access bits at all; Python's mmap module has no name for it


class Events:
    """Builds one thread's events; `seq` is shared so several builders interleave like a trace."""

    def __init__(self, tid: int, pid: int, seq: Iterator[int]) -> None:
        self.tid, self.pid, self._seq = tid, pid, seq

    def _call(self, ret: int, failed: int | None = None) -> tuple[int, int, int, int, int | None]:
        return (next(self._seq), self.tid, self.pid, ret, failed)

    def open_kvm(self, fd: int = 9) -> events.OpenKvm:
        return events.OpenKvm(*self._call(fd), "/dev/kvm", os.O_RDWR | os.O_CLOEXEC, "kvm")

    def ioctl(
        self,
        name: str,
        fd_role: str,
        *,
        ret: int = 0,
        failed: int | None = None,
        arg: int = 0,
        inputs: events.Fields | None = None,
        run_exit: events.Fields | None = None,
        new_fd_role: str | None = None,
    ) -> events.Ioctl:
        return events.Ioctl(
            *self._call(ret, failed),
            fd={"kvm": 9, "vm": 10}.get(fd_role, 11),
            fd_role=fd_role,
            request=IOCTLS[name].number if name in IOCTLS else 0xAEFF,
            name=name if name in IOCTLS else None,
            arg=arg,
            inputs=inputs,
            run_exit=run_exit,
            new_fd_role=new_fd_role,
        )

    def mmap(
        self,
        ret: int,
        length: int,
        prot: int,
        flags: int,
        *,
        addr: int = 0,
        fd_role: str | None = None,
    ) -> events.Mmap:
        fd = -1 if fd_role is None else 11
        return events.Mmap(*self._call(ret), addr, length, prot, flags, fd, fd_role, 0)

    def munmap(self, addr: int, length: int) -> events.Munmap:
        return events.Munmap(*self._call(0), addr, length)

    def started(self, parent_tid: int, kind: str = "thread") -> events.TaskStarted:
        return events.TaskStarted(next(self._seq), self.tid, self.pid, parent_tid, kind)


def qemu_memory_setup(main: Events) -> list[events.Event]:
    """The seed article's strace: reservation, RAM fixed inside it, slot 0 at gpa 0."""
    return [
        main.open_kvm(),
        main.ioctl("KVM_GET_API_VERSION", "kvm", ret=12),
        main.ioctl("KVM_CREATE_VM", "kvm", ret=10, new_fd_role="vm"),
        main.ioctl("KVM_CHECK_EXTENSION", "vm", ret=1, arg=kvm_abi.KVM_CAP_USER_MEMORY),
        main.mmap(RESERVATION, RESERVATION_SIZE, PROT_NONE, ANONYMOUS_PRIVATE),
        main.mmap(
            RESERVATION,
            RAM_SIZE,
            mmap.PROT_READ | mmap.PROT_WRITE,
            ANONYMOUS_PRIVATE,
            addr=RESERVATION,
        ),
        main.ioctl(
            "KVM_SET_USER_MEMORY_REGION",
            "vm",
            inputs={
                "slot": 0,
                "flags": 0,
                "guest_phys_addr": 0,
                "memory_size": RAM_SIZE,
                "userspace_addr": RESERVATION,
            },
        ),
    ]


def io_exit(port: int, byte: int) -> events.Fields:
    return {
        "exit_reason": kvm_abi.KVM_EXIT_IO,
        "io": {
            "direction": kvm_abi.KVM_EXIT_IO_OUT,
            "size": 1,
            "port": port,
            "count": 1,
            "data_offset": 0x1000,
        },
        "data": bytes([byte]),
    }


def vcpu_thread(vcpu: Events, text: bytes) -> list[events.Event]:
    calls: list[events.Event] = [
        vcpu.ioctl("KVM_CREATE_VCPU", "vm", ret=11, new_fd_role="vcpu0"),
        vcpu.mmap(
            KVM_RUN_PAGE, 0x3000, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd_role="vcpu0"
        ),
    ]
    for byte in text:
        calls.append(vcpu.ioctl("KVM_RUN", "vcpu0", run_exit=io_exit(0x3F8, byte)))
    calls.append(vcpu.ioctl("KVM_RUN", "vcpu0", run_exit={"exit_reason": kvm_abi.KVM_EXIT_HLT}))
    return calls


def at(value: Value, *keys: str) -> Value:
    """value[k1][k2]... for nested entries, checking each step is a mapping."""
    for key in keys:
        assert isinstance(value, dict)
        value = value[key]
    return value


def normalized(stream: Iterable[events.Event]) -> str:
    normalizer = Normalizer({"scenario": "hello", "tool": "test"})
    for event in stream:
        normalizer.add(event)
    return dump_document(normalizer.finish())


def entries(stream: Iterable[events.Event]) -> dict[str, list[Entry]]:
    normalizer = Normalizer()
    for event in stream:
        normalizer.add(event)
    return {
        role: [call.entry for call in calls] for role, calls in normalizer.finish().threads.items()
    }


def test_qemu_reservation_and_fixed_ram_are_named_and_kept() -> None:
    main = Events(140900, 140900, itertools.count())
    threads = entries(qemu_memory_setup(main))
    calls = threads["main"]
    assert calls[0] == {
        "call": "open",
        "path": "/dev/kvm",
        "flags": ["O_RDWR", "O_CLOEXEC"],
        "ret": "kvm",
    }
    assert calls[1] == {
        "call": "ioctl",
        "fd": "kvm",
        "req": "KVM_GET_API_VERSION",
        "out": {"ret": 12},
    }
    assert calls[2]["ret"] == "vm"
    assert calls[3]["arg"] == "KVM_CAP_USER_MEMORY" and calls[3]["out"] == {"ret": 1}
    reservation, ram, region = calls[4], calls[5], calls[6]
    assert reservation["prot"] == ["PROT_NONE"] and reservation["ret"] == "region0"
    assert reservation["flags"] == ["MAP_PRIVATE", "MAP_ANONYMOUS"]
    assert ram["addr"] == "region0+0x0" and ram["ret"] == "ram0"
    assert region["in"] == {
        "slot": 0,
        "flags": [],
        "guest_phys_addr": 0,
        "memory_size": RAM_SIZE,
        "userspace_addr": "ram0+0x0",
    }
    assert type(at(region, "in", "memory_size")) is Hex
    assert type(at(region, "in", "slot")) is int


def test_memory_no_kvm_call_references_is_dropped_with_its_munmap() -> None:
    main = Events(7, 7, itertools.count())
    stream = qemu_memory_setup(main)
    heap = 0x7F0000000000
    stream[4:4] = [main.mmap(heap, 1 << 20, mmap.PROT_READ | mmap.PROT_WRITE, ANONYMOUS_PRIVATE)]
    stream.append(main.munmap(heap, 1 << 20))
    stream.append(main.munmap(RESERVATION + RAM_SIZE, 2 << 20))  # the reservation's tail: kept
    calls = entries(stream)["main"]
    assert [c["call"] for c in calls].count("mmap") == 2
    assert calls[-1] == {"call": "munmap", "addr": "region0+0x40000000", "len": 2 << 20}


def test_identical_kvm_run_exits_collapse_as_they_arrive() -> None:
    seq = itertools.count()
    main, vcpu = Events(1, 1, seq), Events(2, 1, seq)
    normalizer = Normalizer()
    for event in [*qemu_memory_setup(main), vcpu.started(1), *vcpu_thread(vcpu, b"")]:
        normalizer.add(event)
    for _ in range(100_000):
        normalizer.add(vcpu.ioctl("KVM_RUN", "vcpu0", run_exit=io_exit(0xF4, 0)))
    runs = [c.entry for c in normalizer.finish().threads["vcpu0"] if c.name == "KVM_RUN"]
    assert runs[-1]["repeat"] == 100_000
    assert runs[-1]["exit"] == {
        "reason": "KVM_EXIT_IO",
        "direction": "out",
        "size": 1,
        "port": 0xF4,
        "count": 1,
        "data_offset": 0x1000,
        "data": [0],
    }


def test_runs_separated_only_by_dropped_calls_are_joined() -> None:
    vcpu = Events(3, 3, itertools.count())
    run = vcpu.ioctl("KVM_RUN", "vcpu0", run_exit={"exit_reason": kvm_abi.KVM_EXIT_INTR})
    unrelated = vcpu.mmap(0x7F0000000000, 4096, mmap.PROT_READ, ANONYMOUS_PRIVATE)
    calls = entries([run, unrelated, run, run])["vcpu0"]
    assert calls == [
        {
            "call": "ioctl",
            "fd": "vcpu0",
            "req": "KVM_RUN",
            "exit": {"reason": "KVM_EXIT_INTR"},
            "repeat": 3,
        }
    ]


def test_thread_roles_come_from_what_threads_do() -> None:
    seq = itertools.count()
    main, vcpu, irq_a, irq_b = (Events(tid, 50, seq) for tid in (50, 51, 52, 53))
    stream = [*qemu_memory_setup(main), vcpu.started(50), *vcpu_thread(vcpu, b"hi")]
    stream += [irq_a.started(50), irq_b.started(50)]
    stream.append(irq_b.ioctl("KVM_IRQ_LINE", "vm", inputs={"irq": 4, "level": 1}))
    stream.append(irq_a.ioctl("KVM_IRQ_LINE", "vm", inputs={"irq": 4, "level": 0}))
    threads = entries(stream)
    assert list(threads) == ["main", "vcpu0", "thread:vm", "thread:vm#2"]
    assert threads["thread:vm"][0]["in"] == {"irq": 4, "level": 0}  # ordered by content
    assert threads["vcpu0"][0]["req"] == "KVM_CREATE_VCPU"
    assert threads["vcpu0"][1]["ret"] == "kvm_run:vcpu0"
    assert [at(c, "exit", "data") for c in threads["vcpu0"][2:4]] == [[ord("h")], [ord("i")]]


def test_single_threaded_vmm_runs_its_vcpu_on_main() -> None:
    main = Events(9, 9, itertools.count())
    threads = entries([*qemu_memory_setup(main), *vcpu_thread(main, b"x")])
    assert list(threads) == ["main"]
    assert threads["main"][-1]["exit"] == {"reason": "KVM_EXIT_HLT"}


def interleaved(tids: tuple[int, int], vcpu_first: bool) -> list[events.Event]:
    seq = itertools.count(1000)
    main, vcpu = Events(tids[0], tids[0], seq), Events(tids[1], tids[0], seq)
    setup = qemu_memory_setup(main)
    started = vcpu.started(tids[0])
    run = vcpu_thread(vcpu, b"Hello")
    if vcpu_first:
        return [setup[0], setup[1], setup[2], started, *run[:2], *setup[3:], *run[2:]]
    return [*setup, started, *run]


def test_output_is_byte_identical_across_runs_tid_numbering_and_scheduling() -> None:
    first = normalized(interleaved((100, 101), vcpu_first=False))
    assert normalized(interleaved((100, 101), vcpu_first=False)) == first
    assert normalized(interleaved((4242, 17), vcpu_first=False)) == first
    assert normalized(interleaved((31337, 31338), vcpu_first=True)) == first


def test_forked_processes_are_named_by_fork_order() -> None:
    seq = itertools.count()
    parent, child = Events(10, 10, seq), Events(20, 20, seq)
    stream: list[events.Event] = [parent.started(0, "process"), parent.open_kvm()]
    stream += [child.started(10, "process"), child.open_kvm()]
    stream.append(child.ioctl("KVM_CREATE_VM", "kvm", ret=10, new_fd_role="vm"))
    threads = entries(stream)
    assert list(threads) == ["proc0/main", "proc0.1/main"]
    assert threads["proc0.1/main"][1]["ret"] == "vm"


def test_failures_unknown_requests_and_stray_pointers_stay_visible() -> None:
    main = Events(5, 5, itertools.count())
    stream = qemu_memory_setup(main)
    stream.append(
        main.ioctl(
            "KVM_SET_USER_MEMORY_REGION",
            "vm",
            failed=errno.EINVAL,
            inputs={
                "slot": 1,
                "flags": 2,
                "guest_phys_addr": 0x100000,
                "memory_size": 0x1000,
                "userspace_addr": 0x5555DEAD0000,
            },
        )
    )
    stream.append(main.ioctl("KVM_NOT_A_REQUEST", "vm", arg=0x7FFC1234))
    calls = entries(stream)["main"]
    assert calls[-2]["errno"] == "EINVAL"
    assert at(calls[-2], "in", "userspace_addr") == UNMAPPED
    assert at(calls[-2], "in", "flags") == ["KVM_MEM_READONLY"]
    assert calls[-1] == {"call": "ioctl", "fd": "vm", "req": 0xAEFF}  # the pointer is not shown


def test_eventfds_handed_to_kvm_are_kept_and_named() -> None:
    main = Events(5, 5, itertools.count())
    used = events.EventFd(1, 5, 5, 20, None, initval=0, flags=os.EFD_CLOEXEC)
    unused = events.EventFd(2, 5, 5, 21, None, initval=0, flags=0)
    irqfd = main.ioctl("KVM_IRQFD", "vm", inputs={"fd": 20, "gsi": 4, "flags": 0, "resamplefd": 0})
    calls = entries([main.open_kvm(), used, unused, irqfd])["main"][1:]
    assert calls[0] == {
        "call": "eventfd2",
        "initval": 0,
        "flags": ["EFD_CLOEXEC"],
        "ret": "eventfd0",
    }
    assert at(calls[1], "in", "fd") == "eventfd0"
    assert len(calls) == 2


def test_exit_payloads_are_symbolic() -> None:
    vcpu = Events(3, 3, itertools.count())
    shutdown = vcpu.ioctl(
        "KVM_RUN",
        "vcpu0",
        run_exit={
            "exit_reason": kvm_abi.KVM_EXIT_SYSTEM_EVENT,
            "system_event": {"type": kvm_abi.KVM_SYSTEM_EVENT_RESET, "ndata": 0},
        },
    )
    mmio = vcpu.ioctl(
        "KVM_RUN",
        "vcpu0",
        run_exit={
            "exit_reason": kvm_abi.KVM_EXIT_MMIO,
            "mmio": {"phys_addr": 0xFEE00000, "data": bytes(8), "len": 4, "is_write": 1},
        },
    )
    calls = entries([shutdown, mmio])["vcpu0"]
    assert calls[0]["exit"] == {
        "reason": "KVM_EXIT_SYSTEM_EVENT",
        "type": "KVM_SYSTEM_EVENT_RESET",
        "ndata": 0,
    }
    assert calls[1]["exit"] == {
        "reason": "KVM_EXIT_MMIO",
        "phys_addr": 0xFEE00000,
        "data": [0] * 8,
        "len": 4,
        "is_write": 1,
    }


def test_memory_churn_before_any_kvm_reference_leaves_no_trace() -> None:
    main = Events(8, 8, itertools.count())
    normalizer = Normalizer()
    for event in qemu_memory_setup(main):
        normalizer.add(event)
    arena = 0x7F2200000000
    for _ in range(20_000):  # a malloc arena mapped and unmapped over and over
        normalizer.add(
            main.mmap(arena, 1 << 20, mmap.PROT_READ | mmap.PROT_WRITE, ANONYMOUS_PRIVATE)
        )
        normalizer.add(main.munmap(arena, 1 << 20))
    calls = [call.entry for call in normalizer.finish().threads["main"]]
    assert [call["call"] for call in calls].count("mmap") == 2
    assert all(call.get("addr") != "region1+0x0" for call in calls)
