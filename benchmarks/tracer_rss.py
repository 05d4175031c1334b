"""The tracer's peak resident memory while it traces N KVM_RUN exits, in one fresh process.

    python benchmarks/tracer_rss.py full 1000000 [--no-ebpf]
    {"mode": "full", "ebpf": true, "exits": 1000000, "kvm_run_calls": 1000001, "peak_mib": 19.2}

The figure is the process's peak (VmHWM) over the whole run: in full mode the eBPF recorder
(or, with --no-ebpf, the compiled loop) hands identical exits over merged, so there is no
point in the run where N single exits have arrived to sample at. Comparing the peak at 10k
and at 1M exits shows whether memory grows with the exits traced. Tracer and tracee are
pinned to one CPU, as `trace --pin`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from conformance.model.events import Event, Ioctl, KvmRunMode
from conformance.tracer import trace

_MIB = 1 << 20
_GUEST_RUNNER = Path(__file__).with_name("exits_guest.py")


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise LookupError(f"no {field} in /proc/self/status")


def measure(mode: KvmRunMode, exits: int, *, ebpf: bool) -> dict[str, object]:
    calls = 0

    def on_event(event: Event) -> None:
        nonlocal calls
        if isinstance(event, Ioctl) and event.name == "KVM_RUN":
            calls += event.repeat

    argv = [sys.executable, str(_GUEST_RUNNER), str(exits)]
    outcome = trace(argv, on_event, kvm_run=mode, pin=True, ebpf=ebpf)
    if outcome.exit_status != 1:  # the guest ends with 0 to the debug-exit port: status 1
        raise SystemExit(f"traced guest ended with status {outcome.exit_status}")
    return {
        "mode": mode,
        "ebpf": outcome.ebpf_kvm_run,
        "exits": exits,
        "kvm_run_calls": calls,  # full mode: every one decoded (exits + the debug-exit one)
        "peak_mib": _status_kib("VmHWM") * 1024 / _MIB,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("full", "summary", "off"))
    parser.add_argument("exits", type=int)
    parser.add_argument("--no-ebpf", action="store_true", help="full mode: a stop per KVM_RUN")
    arguments = parser.parse_args()
    result = measure(arguments.mode, arguments.exits, ebpf=not arguments.no_ebpf)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
