"""`kvm-conformance`: the command line.

Exit statuses: a command's own result (0, 1 for a difference or finding, the guest's or traced
program's status), 2 for a usage or environment error (no /dev/kvm, unknown scenario, unreadable
input), 3 when a guest stops abnormally (triple fault, failed entry, internal error, run limit),
127 when the command to trace could not be started.
Every error the project raises on purpose becomes one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from conformance.commands import check, diff, lint, trace, vmm
from conformance.errors import ConformanceError, GuestFault
from conformance.tracer import SpawnError
from conformance.vmm.machine import RunLimitExceeded

EXIT_USAGE = 2
EXIT_GUEST_FAULT = 3
# As a shell (and env, timeout, nohup) reports a command it could not start.
EXIT_COMMAND_NOT_STARTED = 127

_COMMAND_MODULES = (vmm, trace, check, lint, diff)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.command
    try:
        return command(args)
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python's exit-time flush of
        # stdout from failing a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_USAGE
    except SpawnError as error:
        print(f"kvm-conformance: {error}", file=sys.stderr)
        return EXIT_COMMAND_NOT_STARTED
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
