"""Tracer overhead (issue 4's table): hello, exits-100k and QEMU -S under native, strace -f,
strace -f -X verbose and ours (full decoding, with the eBPF recorder and with the compiled
loop), both CPU placements, ratios to native.

The measurement is benchmarks/run.py's; this is its `--subset tracer-overhead`.

Run: python benchmarks/tracer_overhead.py [--repetitions N]
"""

from __future__ import annotations

import sys

from run import main  # benchmarks/ is on sys.path when this file is run as a script

if __name__ == "__main__":
    main(["--subset", "tracer-overhead", *sys.argv[1:]])
