"""benchmarks/run.py keeps its tables when a row times out or fails (issue 17: one 30 s row of
strace across CPUs ended a whole run with `no median for empty data`)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# benchmarks/ is a directory of scripts, not a package: run.py imports exits_guest beside it.
sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
import run


def _cells() -> dict[tuple[str, str, str], run.Cell]:
    cells: dict[tuple[str, str, str], run.Cell] = {}
    for workload in run.WORKLOADS:
        for tracer in run.TRACERS:
            for placement in ("same CPU", "different CPUs"):
                cell = run.Cell([1.0, 1.2, 1.1], [0.9, 1.0], [0.8, 0.85])
                if tracer.name == "strace -f -X verbose" and placement == "different CPUs":
                    cell = run.Cell(failures=[f"timed out ({run.RUN_TIMEOUT_SECONDS} s)"])
                cells[(workload.name, tracer.name, placement)] = cell
    return cells


def test_a_row_that_timed_out_is_shown_as_such_and_the_others_are_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    placements = {"same CPU": (0, 0), "different CPUs": (0, 1)}
    monkeypatch.setattr(run, "placements", lambda: placements)  # whatever this host's CPUs
    cells = _cells()
    lines = run.table(cells, run.TRACERS)
    lost = [line for line in lines if "strace -f -X verbose" in line]
    assert lost and all("timed out (120 s)" in line for line in lost)
    for cpu in (False, True):
        vmm = run.vmm_run_table(cells, run.TRACERS, cpu=cpu)
        row = next(line for line in vmm if line.startswith("| strace -f -X verbose |"))
        assert "timed out" in row and row.count("| - |") >= 1
        native = next(line for line in vmm if line.startswith("| native |"))
        assert "1.00" in native
    kept = next(line for line in lines if "| exits-100k | ours full (ebpf) |" in line)
    assert "1.10 (1.00-1.20)" in kept


def test_what_a_cell_says_of_its_runs() -> None:
    assert run.shown([2.0], []) == "2.00 (1 run)"
    assert run.shown([1.0, 3.0, 2.0], ["failed (3)"]) == "2.00 (1.00-3.00, 1 failed (3))"
    assert run.shown([], []) == "-"
    assert run.per_call_us(1.5, 1.0, 100_000) == "5.00"
    assert run.per_call_us(None, 1.0, 100_000) == run.ratio(None, 1.0) == "-"
