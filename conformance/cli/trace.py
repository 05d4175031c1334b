"""`trace`: run a command (or attach to a pid) under the tracer and print its KVM calls."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import TextIO

from conformance.cli.arguments import command_after_dashes
from conformance.model.document import Entry, Value
from conformance.model.errors import ConformanceError
from conformance.model.events import Event
from conformance.tracer import TraceOutcome, attach, trace
from conformance.tracer.text import TextWriter


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "trace", help="run a command (or attach to a pid) under the tracer and print its KVM calls"
    )
    parser.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")
    parser.add_argument("--format", choices=("text", "yaml"), default="text")
    parser.add_argument(
        "--kvm-run",
        choices=("full", "summary", "off"),
        default="full",
        help="full: decode every KVM_RUN exit; summary: let KVM_RUN run unstopped and record "
        "each vCPU's exit counters from KVM's stats; off: KVM_RUN unstopped and unrecorded",
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
    parser.add_argument("-p", "--pid", type=int, help="attach to a running VMM instead")
    parser.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ARGS")
    parser.set_defaults(command=_trace)


def _trace(args: argparse.Namespace) -> int:
    command = command_after_dashes(args.argv)
    if bool(command) == (args.pid is not None):
        raise ConformanceError("trace: give either a command after `--` or --pid, not both")
    with _output(args.output) as stream:
        if args.format == "text":
            outcome = _traced(args, command, TextWriter(stream))
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
                outcome = _traced(args, command, writer)
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
        return attach(args.pid, writer, kvm_run=args.kvm_run)
    return trace(command, writer, kvm_run=args.kvm_run, fast_path=not args.no_fast_path,
                 pin=args.pin, ebpf=not args.no_ebpf)  # fmt: skip


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
