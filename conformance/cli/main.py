"""`kvm-conformance`: the command line.

Exit statuses (cli/arguments.py, EXIT_STATUSES): 0 passed, 1 a judgment failed (a difference,
a deviation not allowed, a rule's error), 2 a usage or environment error (a bad option, an
unreadable or wrong kind of file, a process that does not exist, no /dev/kvm), 3 a guest that
stopped abnormally, 127 a command to trace that could not be started; `trace` and `run`
otherwise exit with the traced program's or the guest's own status. Every error the project
raises on purpose becomes one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Callable, Sequence

from conformance.cli.arguments import (
    EXIT_STATUSES,
    EXIT_USAGE,
    add_version_option,
    split_at_dashes,
)
from conformance.model.errors import ConformanceError
from conformance.model.printable import shown_text

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
    "review": "conformance.cli.review",
    "init": "conformance.cli.init",
}
_EXAMPLES = """\
examples:
  kvm-conformance trace -- ./my-vmm guest.bin      # every KVM call, strace-like, on stderr
  kvm-conformance check                            # the gate: every scenario, three judgments
  kvm-conformance diff mine.yaml memory-1g --html report.html   # a shipped reference
  kvm-conformance lint mine.yaml --format sarif    # KVM usage rules, for code scanning
  kvm-conformance COMMAND --help                   # a command's options and examples"""


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt as interrupt:
        # Ctrl-C before a command installed its own handling (while modules load, ~0.2 s, or
        # the tracer's StartInterrupted): the status of a program that the signal ended, and
        # one line, not a traceback.
        signum = getattr(interrupt, "signum", signal.SIGINT)
        print(f"kvm-conformance: {interrupt or 'interrupted by SIGINT'}", file=sys.stderr)
        return 128 + signum


def _main(argv: Sequence[str] | None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    split = split_at_dashes(arguments)
    parser = _parser(split.ours[:1])
    args = parser.parse_args(split.ours)
    if split.command is not None:
        if not getattr(args, "takes_command", False):
            parser.error(f"{split.ours[0]} takes no command after `--`")
        args.after_dashes = split.command
    command: Callable[[argparse.Namespace], int] = args.command
    try:
        return command(args)
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python's exit-time flush of
        # stdout from failing a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_USAGE
    except ConformanceError as error:
        print(f"kvm-conformance: {shown_text(str(error))}", file=sys.stderr)
        return error.exit_status


def _parser(first_argument: list[str]) -> argparse.ArgumentParser:
    """The parser, with only the named command's module loaded when the first argument names
    one (every module for `--help` or a mistyped command, so that usage lists them all)."""
    parser = argparse.ArgumentParser(
        prog="kvm-conformance",
        description="Check that a VMM drives /dev/kvm the way QEMU does: trace it, compare "
        "the trace with its snapshot and with QEMU's reference, lint it.",
        epilog=f"{_EXAMPLES}\n\n{EXIT_STATUSES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_version_option(parser)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    named = _COMMAND_MODULES.get(first_argument[0]) if first_argument else None
    modules = [named] if named is not None else sorted(set(_COMMAND_MODULES.values()))
    for module in modules:
        importlib.import_module(module).register(commands)
    return parser


if __name__ == "__main__":
    sys.exit(main())
