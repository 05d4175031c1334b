"""`kvm-conformance`: the command line.

Exit statuses: a command's own result (0, 1 for a difference or finding, the guest's or traced
program's status), 2 for a usage or environment error (no /dev/kvm, unknown scenario, unreadable
input), 3 when a guest stops abnormally (triple fault, failed entry, internal error, run limit).
Every error the project raises on purpose becomes one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from conformance.commands import check, trace, vmm
from conformance.errors import ConformanceError, GuestFault
from conformance.vmm.machine import RunLimitExceeded

EXIT_USAGE = 2
EXIT_GUEST_FAULT = 3

_COMMAND_MODULES = (vmm, trace, check)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.command
    try:
        return command(args)
    except (GuestFault, RunLimitExceeded) as fault:
        print(f"kvm-conformance: {fault}", file=sys.stderr)
        return EXIT_GUEST_FAULT
    except ConformanceError as error:
        print(f"kvm-conformance: {error}", file=sys.stderr)
        return EXIT_USAGE


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvm-conformance",
        description="Check that a VMM drives /dev/kvm the way QEMU does.",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    for module in _COMMAND_MODULES:
        module.register(commands)
    return parser


if __name__ == "__main__":
    sys.exit(main())
