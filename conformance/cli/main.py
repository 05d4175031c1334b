"""`kvm-conformance`: the command line.

Exit statuses: a command's own result (0, 1 for a difference or finding, the guest's or traced
program's status), 2 for a usage or environment error (no /dev/kvm, unknown scenario, unreadable
input), 3 when a guest stops abnormally (triple fault, failed entry, internal error, run limit),
127 when the command to trace could not be started: each error class carries its status.
Every error the project raises on purpose becomes one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from conformance.model.errors import ConformanceError
from conformance.model.printable import printable_text

EXIT_USAGE = 2

# Subcommand -> the module that registers it. Only the running command's module is imported:
# `run` does not pay for the tracer, nor `trace` for the comparison and rules code, and a traced
# VMM or tracer that starts in 0.1 s instead of 0.4 s is what short runs are measured by.
_COMMAND_MODULES = {
    "abi": "conformance.cli.vmm",
    "scenarios": "conformance.cli.vmm",
    "run": "conformance.cli.vmm",
    "trace": "conformance.cli.trace",
    "check": "conformance.cli.check",
    "lint": "conformance.cli.lint",
    "diff": "conformance.cli.diff",
}


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = _parser(arguments[:1]).parse_args(arguments)
    command: Callable[[argparse.Namespace], int] = args.command
    try:
        return command(args)
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python's exit-time flush of
        # stdout from failing a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_USAGE
    except ConformanceError as error:
        print(f"kvm-conformance: {printable_text(str(error))}", file=sys.stderr)
        return error.exit_status


def _parser(first_argument: list[str]) -> argparse.ArgumentParser:
    """The parser, with only the named command's module loaded when the first argument names
    one (every module for `--help` or a mistyped command, so that usage lists them all)."""
    parser = argparse.ArgumentParser(
        prog="kvm-conformance",
        description="Check that a VMM drives /dev/kvm the way QEMU does.",
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    named = _COMMAND_MODULES.get(first_argument[0]) if first_argument else None
    modules = [named] if named is not None else sorted(set(_COMMAND_MODULES.values()))
    for module in modules:
        importlib.import_module(module).register(commands)
    return parser


if __name__ == "__main__":
    sys.exit(main())
