"""Every scenario of the VMM core, run on the real kernel, with its exact output and status."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conformance.model.errors import UnknownScenarioError
from conformance.model.scenarios import SCENARIOS
from conformance.vmm.exits import HltExit, IoDirection, IoExit
from conformance.vmm.machine import RunResult, run_scenario

pytestmark = pytest.mark.needs_kvm

HELLO = b"Hello from KVM!\n"
HELLO_EXITS = {"IoExit": 32, "MmioExit": 15, "HltExit": 1}


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_registry_names_the_six_scenarios() -> None:
    assert set(SCENARIOS) == {
        "memory-setup",
        "qemu-memory-layout",
        "hello",
        "hello-long",
        "tiny-bios",
        "exits-100k",
    }
    assert all(scenario.description for scenario in SCENARIOS.values())


@pytest.mark.parametrize("name", ["memory-setup", "qemu-memory-layout"])
def test_memory_scenarios_run_no_guest(name: str) -> None:
    assert run_scenario(name) == RunResult(scenario=name)


@pytest.mark.parametrize("name", ["hello", "hello-long"])
def test_hello_prints_on_serial_and_screen_then_halts(name: str) -> None:
    result = run_scenario(name)
    assert result.serial_output == HELLO
    assert result.screen_text == "Hello from KVM!"
    assert result.status == 0
    assert dict(result.exit_counts) == HELLO_EXITS
    assert result.final_exit == HltExit()


def test_tiny_bios_runs_from_the_reset_vector_and_exits_like_qemu() -> None:
    result = run_scenario("tiny-bios")
    assert result.serial_output == b"tiny-bios: hello from the reset vector\n"
    assert result.status == (0x10 << 1) | 1
    assert dict(result.exit_counts) == {"IoExit": 2 * 39 + 1}
    assert result.final_exit == IoExit(IoDirection.OUT, 1, 0xF4, 1, b"\x10")


def test_exits_100k_makes_exactly_its_exits() -> None:
    result = run_scenario("exits-100k")
    assert result.serial_output == b""
    assert result.status == 1
    assert dict(result.exit_counts) == {"IoExit": 100_001}
    assert result.final_exit == IoExit(IoDirection.OUT, 1, 0xF4, 1, b"\x00")


def test_unknown_scenario_lists_the_known_ones() -> None:
    with pytest.raises(UnknownScenarioError, match="hello-long") as error:
        run_scenario("no-such-scenario")
    assert "no-such-scenario" in str(error.value)


def test_scenarios_in_a_loop_leak_no_fd_and_no_mapping() -> None:
    run_scenario("hello")  # warm up lazily opened files (imports, libc)
    fds = open_fds()
    maps = len(Path("/proc/self/maps").read_text().splitlines())
    for _ in range(10):
        for name in ("memory-setup", "qemu-memory-layout", "hello", "hello-long", "tiny-bios"):
            run_scenario(name)
    assert open_fds() == fds
    assert len(Path("/proc/self/maps").read_text().splitlines()) == maps
