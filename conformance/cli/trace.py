"""`trace`: run a command (or attach to a pid) under the tracer and print its KVM calls.

The trace goes to stderr (as strace's does) or to `-o FILE`, never to stdout: the traced VMM's
own output stays on its stdout, and `trace ... > vmm.out` keeps the two apart.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import TextIO

from conformance.cli.arguments import add_command, traced_command
from conformance.cli.trace_selection import parse_selection
from conformance.model.document import Entry, Value
from conformance.model.errors import ConformanceError
from conformance.model.events import Event
from conformance.tracer import TraceOutcome, attach, trace
from conformance.tracer.text import DEFAULT_STRING_LIMIT, TextOptions, TextWriter


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        commands,
        "trace",
        summary="run a VMM (or attach to one) under the tracer and print its KVM calls",
        description="Run a command under ptrace, or attach to a running VMM, and write every "
        "KVM call as it happens, each ioctl's structs decoded at entry and exit: strace-like "
        "text, or the raw YAML stream (`--format yaml`, schema kvm-conformance-raw/1, which "
        "`diff` and `lint` read too). The trace goes to stderr or -o FILE; the VMM's own "
        "stdout stays its own. Options come before the command; `--` ends them.",
        examples=[
            "kvm-conformance trace -- ./my-vmm guest.bin",
            "kvm-conformance trace -o vmm.trace -e ioctl=KVM_RUN,KVM_SET_REGS -- ./my-vmm",
            "kvm-conformance trace --format yaml -o raw.yaml -- qemu-system-x86_64 -S ...",
            "kvm-conformance trace -p 4242            # attach; Ctrl-C detaches",
        ],
    )
    parser.add_argument(
        "-o", "--output", metavar="FILE", help="write the trace here (default: stderr)"
    )
    parser.add_argument(
        "--format",
        choices=("text", "yaml"),
        default="text",
        help="text: strace-like lines (default); yaml: the raw YAML stream",
    )
    parser.add_argument(
        "-s",
        "--string-limit",
        type=_positive,
        default=DEFAULT_STRING_LIMIT,
        metavar="N",
        help=f"text: show at most N bytes of a string and N items of an array "
        f"(default {DEFAULT_STRING_LIMIT}, as strace)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="text: every entry of a table (CPUID entries, MSRs), not only the first",
    )
    parser.add_argument(
        "-e",
        dest="selection",
        action="append",
        default=[],
        metavar="EXPR",
        help="which calls to show: trace=CALL,... or ioctl=REQUEST,... (`!` before the list: "
        "all but those); repeatable",
    )
    parser.add_argument(
        "--kvm-run",
        choices=("full", "summary", "off"),
        default="full",
        help="full: decode every KVM_RUN exit (default); summary: let KVM_RUN run unstopped "
        "and record each vCPU's exit counters from KVM's stats; off: KVM_RUN unstopped and "
        "unrecorded",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="run tracer and command on one CPU (ptrace stops cost several times less)",
    )
    parser.add_argument(
        "--no-ebpf",
        action="store_true",
        help="full mode: stop at each KVM_RUN instead of recording it with eBPF",
    )
    parser.add_argument(
        "--no-fast-path",
        action="store_true",
        help="stop at every syscall instead of installing the seccomp filter",
    )
    parser.add_argument(
        "-p", "--pid", type=int, metavar="PID", help="attach to this running VMM instead"
    )
    parser.add_argument(
        "argv", nargs=argparse.REMAINDER, metavar="[--] CMD ARGS", help="the command to trace"
    )
    parser.set_defaults(command=_trace, takes_command=True)


def _positive(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {number}")
    return number


def _trace(args: argparse.Namespace) -> int:
    command = traced_command(args)
    if command[:1] == ["--"]:
        command = command[1:]
    if command and args.pid is not None:
        raise ConformanceError("trace: give a command to trace or --pid PID, not both")
    if not command and args.pid is None:
        raise ConformanceError("trace: give a command to trace (after `--`) or --pid PID")
    if args.pid is not None and not os.path.isdir(f"/proc/{args.pid}/task"):
        raise ConformanceError(f"trace: no process with pid {args.pid}")
    selection = parse_selection(args.selection)
    with _output(args.output) as stream:
        if args.format == "text":
            options = TextOptions(string_limit=args.string_limit, verbose=args.verbose)
            outcome = _traced(args, command, selection.wrap(TextWriter(stream, options)))
        else:
            # Imported here: it brings PyYAML (~20 ms of imports), which the text format, the
            # default, never uses, and a short traced run is measured by the tracer's start-up.
            from conformance.tracer.raw_yaml import RawYamlWriter  # noqa: PLC0415

            source: Entry = {
                "tool": "kvm-conformance trace",
                "argv": list[Value](command or [f"pid {args.pid}"]),
                "kvm_run": args.kvm_run,
                "host": {"kernel": os.uname().release},
            }
            with RawYamlWriter(stream, source) as writer:
                outcome = _traced(args, command, selection.wrap(writer))
    if outcome.message is not None:
        print(f"kvm-conformance: {outcome.message}", file=sys.stderr)
    if outcome.one_stop_unavailable is not None:  # the same trace, at twice the stops
        print(
            f"kvm-conformance: two stops per KVM_RUN: {outcome.one_stop_unavailable}",
            file=sys.stderr,
        )
    return outcome.exit_status


def _traced(
    args: argparse.Namespace, command: list[str], writer: Callable[[Event], None]
) -> TraceOutcome:
    if args.pid is not None:
        # No seccomp filter can be installed from outside a process: say so, once.
        print(
            f"kvm-conformance: attaching to {args.pid}: every system call stops "
            "(a seccomp filter cannot be installed from outside)",
            file=sys.stderr,
        )
        return attach(args.pid, writer, kvm_run=args.kvm_run, fast_path=False)
    return trace(
        command,
        writer,
        kvm_run=args.kvm_run,
        fast_path=not args.no_fast_path,
        pin=args.pin,
        ebpf=not args.no_ebpf,
    )


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[TextIO]:
    if path is None:
        yield sys.stderr
        return
    try:
        stream = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as error:
        raise ConformanceError(f"cannot write {path}: {error.strerror}") from error
    try:
        yield stream
    except BaseException:
        with contextlib.suppress(OSError):  # the error in flight says more than this one
            stream.close()
        raise
    try:
        stream.close()
    except OSError as error:
        raise ConformanceError(f"cannot write {path}: {error.strerror}") from error
