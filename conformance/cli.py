"""`kvm-conformance`: the command line.

Exit statuses: a command's own result (0, 1 for a difference or finding, the guest's or traced
program's status), 2 for a usage or environment error (no /dev/kvm, unknown scenario, unreadable
input), 3 when a guest stops abnormally (triple fault, failed entry, internal error, run limit).
Every error the project raises on purpose becomes one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TextIO

from conformance.abi import ioctls
from conformance.document import Entry, Value
from conformance.errors import ConformanceError, GuestFault
from conformance.raw_yaml import RawYamlWriter
from conformance.tracer import TraceOutcome, attach, trace
from conformance.tracer.text import TextWriter
from conformance.vmm import machine

EXIT_USAGE = 2
EXIT_GUEST_FAULT = 3


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.command
    try:
        return command(args)
    except (GuestFault, machine.RunLimitExceeded) as fault:
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

    abi = commands.add_parser(
        "abi", help="print the KVM ioctl table: NAME 0xNUMBER DIRECTION FDKIND ARGTYPE"
    )
    abi.set_defaults(command=_abi)

    scenarios = commands.add_parser("scenarios", help="list the VMM core's scenarios")
    scenarios.set_defaults(command=_scenarios)

    run = commands.add_parser(
        "run",
        help="run a scenario on the VMM core; prints the guest's serial output and exits with "
        "its debug-exit status (0 after HLT)",
    )
    run.add_argument("scenario", metavar="SCENARIO")
    run.set_defaults(command=_run)

    tracer = commands.add_parser(
        "trace", help="run a command (or attach to a pid) under the tracer and print its KVM calls"
    )
    tracer.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    tracer.add_argument("--format", choices=("text", "yaml"), default="text")
    tracer.add_argument(
        "--kvm-run",
        choices=("full", "off"),
        default="full",
        help="full: decode every KVM_RUN exit; off: let KVM_RUN run unstopped, unrecorded",
    )
    tracer.add_argument(
        "--no-fast-path",
        action="store_true",
        help="stop at every syscall instead of installing the seccomp filter",
    )
    tracer.add_argument("-p", "--pid", type=int, help="attach to a running VMM instead")
    tracer.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ARGS")
    tracer.set_defaults(command=_trace)
    return parser


def _abi(args: argparse.Namespace) -> int:
    for line in ioctls.describe_table():
        print(line)
    return 0


def _scenarios(args: argparse.Namespace) -> int:
    width = max(len(name) for name in machine.SCENARIOS)
    for name, scenario in sorted(machine.SCENARIOS.items()):
        print(f"{name:<{width}}  {scenario.description}")
    return 0


def _run(args: argparse.Namespace) -> int:
    result = machine.run_scenario(args.scenario)
    sys.stdout.buffer.write(result.serial_output)
    sys.stdout.flush()
    return result.status


def _trace(args: argparse.Namespace) -> int:
    command = list(args.argv[1:] if args.argv[:1] == ["--"] else args.argv)
    if bool(command) == (args.pid is not None):
        raise ConformanceError("trace: give either a command after `--` or --pid, not both")
    with _output(args.output) as stream:
        if args.format == "text":
            outcome = _traced(args, command, TextWriter(stream))
        else:
            source: Entry = {
                "tool": "kvm-conformance trace",
                "argv": list[Value](command or [f"pid {args.pid}"]),
                "host": {"kernel": platform.release()},
            }
            with RawYamlWriter(stream, source) as writer:
                outcome = _traced(args, command, writer)
    if outcome.message is not None:
        print(f"kvm-conformance: {outcome.message}", file=sys.stderr)
    return outcome.exit_status


def _traced(
    args: argparse.Namespace, command: list[str], writer: Callable[..., None]
) -> TraceOutcome:
    if args.pid is not None:
        return attach(args.pid, writer, kvm_run=args.kvm_run)
    return trace(command, writer, kvm_run=args.kvm_run, fast_path=not args.no_fast_path)


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[TextIO]:
    if path is None:
        yield sys.stdout
        return
    try:
        stream = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as error:
        raise ConformanceError(f"cannot write {path}: {error.strerror}") from error
    with stream:
        yield stream


if __name__ == "__main__":
    sys.exit(main())
