"""The tracer streams: its memory does not grow with the number of KVM_RUN exits traced."""

from __future__ import annotations

import sys

import pytest

from conformance.model.events import Event, Ioctl
from conformance.tracer import trace

pytestmark = [pytest.mark.needs_ptrace, pytest.mark.needs_kvm]

_MIB = 1 << 20


def _resident_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def test_rss_stays_flat_from_10k_to_100k_exits() -> None:
    resident: dict[int, int] = {}
    runs = 0

    def on_event(event: Event) -> None:
        nonlocal runs
        if isinstance(event, Ioctl) and event.name == "KVM_RUN":
            runs += event.repeat
            if runs in (10_000, 100_000):
                resident[runs] = _resident_bytes()

    # Each exit costs two ptrace stops here: far more than the run's default 10 s budget. The
    # plain path (no filter) is the one that hands every exit to Python as an event of its own;
    # the fast path's compiled loop merges identical exits (test_tracer_fastpath.py).
    code = (
        "from conformance.vmm.machine import RunLimits, run_scenario; "
        "run_scenario('exits-100k', RunLimits(timeout_seconds=300))"
    )
    outcome = trace([sys.executable, "-c", code], on_event, fast_path=False)
    assert outcome.exit_status == 0 and runs == 100_001
    growth = resident[100_000] - resident[10_000]
    print(
        f"tracer RSS {resident[10_000] / _MIB:.1f} MiB at 10k exits, "
        f"growth {growth / _MIB:+.2f} MiB"
    )
    assert growth < 10 * _MIB
