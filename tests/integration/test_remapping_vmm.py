"""A live VMM that remaps guest memory thousands of times (balloon, hotplug, dirty tracking):
`record-trace vmm` on it crashed with RecursionError at 1,500 MAP_FIXED remaps inside one
reservation. The normalizer's address space is now iterative and O(log n) per call."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conformance.snapshot.store import read_document

pytestmark = [pytest.mark.needs_kvm, pytest.mark.needs_ptrace, pytest.mark.needs_gcc]

_TRACEE = Path(__file__).parents[1] / "fixtures" / "tracees" / "remaps.c"


@pytest.fixture(scope="module")
def remaps(tmp_path_factory: pytest.TempPathFactory) -> str:
    binary = tmp_path_factory.mktemp("remaps") / "remaps"
    subprocess.run(["gcc", "-O1", "-Wall", "-o", str(binary), str(_TRACEE)], check=True)
    return str(binary)


def test_record_trace_vmm_on_thousands_of_remaps(remaps: str, tmp_path: Path) -> None:
    output = tmp_path / "remaps.yaml"
    command = [sys.executable, "-m", "conformance.cli.record_trace", "vmm", "-o", str(output)]
    done = subprocess.run(
        [*command, "--", remaps, "3000", "2000"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    main = read_document(output).threads["main"]
    mmaps = [call.entry for call in main if call.name == "mmap"]
    # The reservation, then each remap of the RAM inside it, each named by the reservation.
    assert mmaps[0]["ret"] == "region0" and mmaps[0]["prot"] == ["PROT_NONE"]
    assert {entry["addr"] for entry in mmaps[1:3001]} == {"region0+0x0"}
    assert len({entry["ret"] for entry in mmaps[1:3001]}) == 3000  # ram0 ... each one its own
    slots = [call.entry for call in main if call.name == "KVM_SET_USER_MEMORY_REGION"]
    assert len(slots) == 2 * 3000 + 2 * 2000
