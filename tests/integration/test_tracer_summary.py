"""`--kvm-run=summary`: KVM_RUN runs unstopped, and each vCPU's exit counters come from KVM's
binary stats, through a KVM_GET_STATS_FD the tracee is made to issue at KVM_CREATE_VCPU.

The counters must agree with what full mode sees exit by exit, for every per-reason counter this
host maintains: `mmio_exits` and `halt_exits` equal the MMIO and HLT exits full mode decodes.
`io_exits` stays 0 here (KVM emulates these guests' port IO without counting it, see DESIGN's
measured facts). `exits` counts every exit from the guest, including those KVM handles itself
(host interrupts, page faults), so it is at least full mode's count of KVM_RUN returns.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from conformance.abi import _generated as abi
from conformance.model.events import CloseFd, Event, Ioctl, KvmRunMode, KvmRunSummary
from conformance.tracer import trace

pytestmark = [pytest.mark.needs_kvm, pytest.mark.needs_ptrace]

_COUNTER_OF_REASON = {abi.KVM_EXIT_MMIO: "mmio_exits", abi.KVM_EXIT_HLT: "halt_exits"}
# A 100k-exit run sees a few dozen to ~1,500 exits KVM handles in the kernel (host interrupts,
# more under load); a tenth bounds them while catching a miscounted or doubled counter.
_IN_KERNEL_EXITS_SHARE = 0.1


def traced(argv: list[str], mode: KvmRunMode) -> list[Event]:
    events: list[Event] = []
    with open(os.devnull, "w") as devnull:
        outcome = trace(argv, events.append, kvm_run=mode, pin=True, stdout=devnull.fileno())
    assert outcome.kvm_run_mode == mode and outcome.opened_kvm
    return events


def _scenario(name: str) -> list[str]:
    code = (
        "from conformance.vmm.machine import RunLimits, run_scenario; "
        f"run_scenario({name!r}, RunLimits(timeout_seconds=300))"
    )
    return [sys.executable, "-c", code]


def full_mode_exits(events: list[Event]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for event in events:
        if isinstance(event, Ioctl) and event.name == "KVM_RUN" and event.run_exit is not None:
            reason = event.run_exit["exit_reason"]
            assert isinstance(reason, int)
            counts["exits"] += event.repeat
            counts[_COUNTER_OF_REASON.get(reason, "other")] += event.repeat
    return counts


def summaries(events: list[Event]) -> dict[str, dict[str, int]]:
    return {e.vcpu_role: e.counters for e in events if isinstance(e, KvmRunSummary)}


@pytest.mark.parametrize("scenario", ["hello", "hello-long"])
def test_summary_counters_equal_the_exits_full_mode_decodes(scenario: str) -> None:
    full = full_mode_exits(traced(_scenario(scenario), "full"))
    summary_events = traced(_scenario(scenario), "summary")
    assert not [e for e in summary_events if isinstance(e, Ioctl) and e.name == "KVM_RUN"]
    (counters,) = summaries(summary_events).values()
    assert counters["exits"] >= full["exits"]
    assert counters["mmio_exits"] == full["mmio_exits"] > 0
    assert counters["halt_exits"] == full["halt_exits"] == 1


def test_summary_of_exits_100k_matches_full_mode() -> None:
    full = full_mode_exits(traced(_scenario("exits-100k"), "full"))
    counters = summaries(traced(_scenario("exits-100k"), "summary"))["vcpu0"]
    assert full["exits"] == 100_001  # 100,000 outs to 0x80, then one to the debug-exit port
    assert counters["mmio_exits"] == full["mmio_exits"] == 0
    assert counters["halt_exits"] == full["halt_exits"] == 0
    assert full["exits"] <= counters["exits"] <= full["exits"] * (1 + _IN_KERNEL_EXITS_SHARE)


def test_the_summary_is_emitted_as_the_vcpu_is_closed() -> None:
    events = traced(_scenario("hello"), "summary")
    (summary,) = [e for e in events if isinstance(e, KvmRunSummary)]
    (close,) = [e for e in events if isinstance(e, CloseFd) and e.fd_role == "vcpu0"]
    assert events.index(summary) + 1 == events.index(close)
    assert summary.tid == close.tid


_FD_PROBE = """
import fcntl, os
from conformance.abi import _generated as abi
kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
vm = fcntl.ioctl(kvm, abi.IOCTL_NUMBERS["KVM_CREATE_VM"], 0)
vcpu = fcntl.ioctl(vm, abi.IOCTL_NUMBERS["KVM_CREATE_VCPU"], 0)
print(vcpu, os.open(os.devnull, os.O_RDONLY), os.open(os.devnull, os.O_RDONLY))
"""


def test_the_tracee_keeps_the_fds_it_would_have_untraced(tmp_path: Path) -> None:
    """The injected KVM_GET_STATS_FD's fd is closed again in the tracee before it goes on."""
    output = tmp_path / "fds"
    argv = [
        sys.executable,
        "-c",
        f"import sys; sys.stdout = open({str(output)!r}, 'w'); {_FD_PROBE}",
    ]
    assert subprocess.run(argv, check=False).returncode == 0
    untraced = output.read_text()
    outcome = trace(argv, lambda event: None, kvm_run="summary")
    assert outcome.exit_status == 0
    assert output.read_text() == untraced
