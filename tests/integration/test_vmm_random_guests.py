"""Random bytes as a real-mode guest: the VMM core always finishes, and only with its own errors.

Every example gets a fresh VM with the full device set; the run is bounded by an exit budget and
a wall-clock limit, so a guest that spins, exits forever or faults can neither hang the test nor
escape as anything but a ConformanceError. No fd may outlive its run.
KVM_CONFORMANCE_RANDOM_GUESTS sets how many guests to try (default 1000).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conformance.model.errors import ConformanceError
from conformance.vmm.guests import GuestImage
from conformance.vmm.machine import RunLimits, run_guest

pytestmark = pytest.mark.needs_kvm

EXAMPLES = int(os.environ.get("KVM_CONFORMANCE_RANDOM_GUESTS", "1000"))
# Short limits: about half of random guests spin without exiting until the timer stops them.
LIMITS = RunLimits(max_exits=10_000, timeout_seconds=0.02)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(code=st.binary(min_size=1, max_size=512))
def test_random_guest_bytes_end_in_a_result_or_a_conformance_error(code: bytes) -> None:
    fds = len(os.listdir("/proc/self/fd"))
    try:
        result = run_guest(GuestImage("random", code, 0x1000, "real", 0x1000), LIMITS)
    except ConformanceError:
        pass
    else:
        assert result.final_exit is not None
    assert len(os.listdir("/proc/self/fd")) == fds
