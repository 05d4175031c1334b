"""QEMU as the tracer's oracle: QEMU's own trace events (`-trace 'kvm_*'`, the log backend with
`-msg timestamp=on`, which prefixes each line with the thread id) name every KVM ioctl it
issues through its wrappers (kvm_ioctl, kvm_vm_ioctl, kvm_vcpu_ioctl, kvm_device_ioctl), each
memory slot it sets and each KVM_RUN exit reason. Traced by us at the same time, QEMU running
tiny-bios must show, thread by thread, the same ioctl requests in the same order, the same
slots and the same exit reasons. With the eBPF recorder (KVM_RUN unstopped) and with a stop
per KVM_RUN.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from pathlib import Path

import pytest

from conformance.model.events import Event, Ioctl
from conformance.qemu.scenarios import qemu_scenario
from conformance.tracer import trace

pytestmark = [pytest.mark.needs_kvm, pytest.mark.needs_ptrace, pytest.mark.needs_qemu]

# "12481@1796219799.160295:kvm_vcpu_ioctl cpu_index 0, type 0x4008ae9c, arg 0x55bed6ca73b8"
_LINE = re.compile(r"^(\d+)@[\d.]+:(\w+) (.*)$")
_WRAPPERS = ("kvm_ioctl", "kvm_vm_ioctl", "kvm_vcpu_ioctl", "kvm_device_ioctl")
_TYPE = re.compile(r"type 0x([0-9a-f]+)")
# "Slot#0 flags=0x0 gpa=0x0 size=0x40000000 ua=0x7fa31fe00000 ret=0"
_SLOT = re.compile(r"Slot#(\d+) flags=0x([0-9a-f]+) gpa=0x([0-9a-f]+) size=0x([0-9a-f]+) "
                   r"ua=0x([0-9a-f]+) ret=(-?\d+)")  # fmt: skip
_SLOT_FIELDS = ("slot", "flags", "guest_phys_addr", "memory_size", "userspace_addr")
_RUN_EXIT = re.compile(r"cpu_index \d+, reason (\d+)")

Sequences = dict[int, list[tuple[int, ...]]]


def _qemu_says(log: str) -> tuple[Sequences, Sequences, Sequences]:
    """Per thread: ioctl requests, memory slots set, KVM_RUN exit reasons."""
    requests: Sequences = defaultdict(list)
    slots: Sequences = defaultdict(list)
    exits: Sequences = defaultdict(list)
    for line in log.splitlines():
        match = _LINE.match(line)
        if match is None:
            continue  # QEMU's own warnings
        tid, event, rest = int(match[1]), match[2], match[3]
        if event in _WRAPPERS:
            found = _TYPE.search(rest)
            assert found is not None, line
            requests[tid].append((int(found[1], 16),))
        elif event == "kvm_set_user_memory":
            slot = _SLOT.match(rest)
            assert slot is not None, line
            if int(slot[6]) == 0:
                slots[tid].append(tuple(int(field, 16) for field in slot.groups()[:5]))
        elif event == "kvm_run_exit":
            reason = _RUN_EXIT.match(rest)
            assert reason is not None, line
            exits[tid].append((int(reason[1]),))
    return requests, slots, exits


def _we_saw(events: list[Event]) -> tuple[Sequences, Sequences, Sequences]:
    requests: Sequences = defaultdict(list)
    slots: Sequences = defaultdict(list)
    exits: Sequences = defaultdict(list)
    for event in events:
        if not isinstance(event, Ioctl) or event.fd_role == "unknown":
            continue
        requests[event.tid] += [(event.request,)] * event.repeat
        if event.name == "KVM_SET_USER_MEMORY_REGION" and event.errno is None:
            fields = event.inputs or {}
            slot = tuple(value for name in _SLOT_FIELDS if isinstance(value := fields[name], int))
            assert len(slot) == len(_SLOT_FIELDS), fields
            slots[event.tid].append(slot)
        if event.name == "KVM_RUN" and event.errno is None and event.run_exit is not None:
            reason = event.run_exit["exit_reason"]
            assert isinstance(reason, int)
            exits[event.tid] += [(reason,)] * event.repeat
    return requests, slots, exits


@pytest.mark.parametrize("ebpf", [True, False], ids=["ebpf", "a stop per KVM_RUN"])
def test_our_trace_of_qemu_is_qemu_s_own_account(ebpf: bool, tmp_path: Path) -> None:
    log = tmp_path / "qemu-trace.log"
    argv = [*qemu_scenario("tiny-bios").argv("qemu-system-x86_64"),
            "-msg", "timestamp=on", "-trace", "kvm_*", "-D", str(log)]  # fmt: skip
    events: list[Event] = []
    with open(os.devnull, "w") as devnull:
        outcome = trace(argv, events.append, ebpf=ebpf, stdout=devnull.fileno(),
                        stderr=devnull.fileno())  # fmt: skip
    assert outcome.exit_status == qemu_scenario("tiny-bios").expected_status
    assert outcome.ebpf_kvm_run == ebpf
    theirs, ours = _qemu_says(log.read_text()), _we_saw(events)
    for what, qemu, us in zip(("ioctl requests", "memory slots", "exit reasons"), theirs, ours,
                              strict=True):  # fmt: skip
        assert dict(us) == dict(qemu), what
    requests, slots, exits = theirs
    assert sum(map(len, requests.values())) > 150 and len(requests) >= 2  # main + vCPU thread
    assert slots and sum(map(len, exits.values())) > 0
