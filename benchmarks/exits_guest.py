"""Run the exits_100k guest built with another exit count, on the VMM core: a traced workload.

    python benchmarks/exits_guest.py 1000000

The guest makes exactly N port-IO exits, then writes 0 to the debug-exit port (status 1, as
`kvm-conformance run exits-100k`). Unlike `run exits-100k`, whose 10 s budget a slow tracer
can exhaust, the run's time limit grows with N. Other counts than 100,000 are assembled at
start (binutils' `as` and `ld`). On stderr it says how long its own run took, from its first
line (the interpreter has started) to the guest's end, in wall and in CPU seconds.
"""

from __future__ import annotations

import time

# The VMM's own run starts here: after the interpreter's start-up, before the VMM core's imports.
_STARTED = time.monotonic()
_STARTED_CPU = time.process_time()

import argparse  # noqa: E402 (after the clock: the imports are part of the VMM's run)
import sys  # noqa: E402

from conformance.vmm.guests import build_variant, guest  # noqa: E402
from conformance.vmm.machine import RunLimits, run_guest  # noqa: E402

# benchmarks/run.py reads these lines from stderr.
VMM_RUN_MARK = "vmm run seconds: "
VMM_CPU_MARK = "vmm cpu seconds: "  # user + system time of the same span: what the VMM itself
# spent, KVM_RUN's work in the kernel (and a tracepoint program's) included, other load not

# The run limits are sized for the slowest tracer measured, strace across CPUs on an Intel host
# (~300 us per exit), plus margin: a limit hit loses the run's figure.
_SECONDS_PER_EXIT_BUDGET = 1e-3
_COMMITTED_EXITS = 100_000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exits", type=int)
    exits = parser.parse_args().exits
    # 100,000 is the committed image (exits-100k's own bytes): no assembler in the timed run.
    image = (
        guest("exits_100k")
        if exits == _COMMITTED_EXITS
        else build_variant("exits_100k", ITERATIONS=exits)
    )
    limits = RunLimits(max_exits=exits + 10, timeout_seconds=10 + exits * _SECONDS_PER_EXIT_BUDGET)
    result = run_guest(image, limits)
    print(f"{VMM_RUN_MARK}{time.monotonic() - _STARTED:.4f}", file=sys.stderr)
    print(f"{VMM_CPU_MARK}{time.process_time() - _STARTED_CPU:.4f}", file=sys.stderr)
    return result.status


if __name__ == "__main__":
    raise SystemExit(main())
