"""The tracer's resident memory while it traces N KVM_RUN exits, in one fresh process.

    python benchmarks/tracer_rss.py full 100000 --sample-at 10000
    {"mode": "full", "exits": 100000, "rss_mib": {"10000": 22.1, "100000": 22.1}, ...}

In full mode VmRSS is sampled when the Nth KVM_RUN event arrives (the tracer holds everything
it has built up by then). Summary and off modes see no KVM_RUN at all: their figure is the
peak (VmHWM) over the whole run. Tracer and tracee are pinned to one CPU, as `trace --pin`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from conformance.events import Event, Ioctl
from conformance.tracer import trace
from conformance.tracer.kvm_calls import KvmRunMode

_MIB = 1 << 20
_GUEST_RUNNER = Path(__file__).with_name("exits_guest.py")


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise LookupError(f"no {field} in /proc/self/status")


def measure(mode: KvmRunMode, exits: int, sample_at: set[int]) -> dict[str, object]:
    samples: dict[str, float] = {}
    runs = 0

    def on_event(event: Event) -> None:
        nonlocal runs
        if isinstance(event, Ioctl) and event.name == "KVM_RUN":
            runs += 1
            if runs in sample_at:
                samples[str(runs)] = _status_kib("VmRSS") * 1024 / _MIB

    argv = [sys.executable, str(_GUEST_RUNNER), str(exits)]
    outcome = trace(argv, on_event, kvm_run=mode, pin=True)
    if outcome.exit_status != 1:  # the guest ends with 0 to the debug-exit port: status 1
        raise SystemExit(f"traced guest ended with status {outcome.exit_status}")
    return {
        "mode": mode,
        "exits": exits,
        "rss_mib": samples,
        "peak_mib": _status_kib("VmHWM") * 1024 / _MIB,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("full", "summary", "off"))
    parser.add_argument("exits", type=int)
    parser.add_argument("--sample-at", type=int, action="append", default=[])
    arguments = parser.parse_args()
    result = measure(arguments.mode, arguments.exits, set(arguments.sample_at) | {arguments.exits})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
