"""`record-trace`: write a normalized trace document from QEMU, any VMM, or an strace log.

    record-trace qemu SCENARIO [-o FILE] [--qemu PATH] [--force]
    record-trace qemu -o FILE [--exit-status N] [--stdin TEXT] [--force] -- QEMU ARGS...
    record-trace vmm [-o FILE] [--force] -- CMD ARGS...
    record-trace strace-log LOG [-o FILE] [--lenient] [--force]

`qemu SCENARIO` records one of kvm-conformance's QEMU scenarios; in kvm-conformance's
repository it writes conformance/qemu/references/SCENARIO.yaml by default (the references that
ship with the package), elsewhere it needs -o. `qemu -o FILE -- QEMU ARGS` records any QEMU
command line as a reference for a project's scenarios (`reference = "FILE"` in its
configuration). Both write QEMU's own output to FILE's .log beside it; the others write to
stdout unless given -o. An existing file is never replaced without --force.

`vmm` runs the VMM as `trace` does: it reads our stdin and writes to our stdout and stderr
(its stdout goes to our stderr when the document itself goes to stdout, so that the document
stays readable YAML). The document is written however the VMM ended, so that a failing VMM
can be linted, but not from a trace that SIGINT/SIGTERM cut short.

Exit status: `vmm` exits with the VMM's own status (128 + N when signal N killed it), so a
failing VMM never gives 0; `qemu` and `strace-log` exit 0 when written. An error of ours exits
with its own status, as `kvm-conformance` does (2 usage or environment, 127 a command that
cannot be started), with one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from conformance.cli.arguments import (
    EXIT_STATUSES,
    add_command,
    add_version_option,
    split_at_dashes,
    traced_command,
)
from conformance.gate.project import load_project
from conformance.gate.references import REFERENCES_IN_SOURCE
from conformance.model.document import TraceDocument
from conformance.model.errors import ConformanceError
from conformance.model.printable import shown_text
from conformance.normalize.capture import capture
from conformance.normalize.strace_import import import_strace_log
from conformance.qemu.recording import find_qemu, record_qemu
from conformance.qemu.scenarios import QEMU_SCENARIOS, QemuScenario, qemu_scenario
from conformance.snapshot.store import dump_document, write_document, write_text

_STDERR_FD = 2  # the process's own stderr, whatever sys.stderr has been replaced by
_SIGNALLED = 128  # a shell's status for a command ended by a signal: 128 + N


class OutputExistsError(ConformanceError):
    """The output file exists and --force was not given."""


def main(argv: Sequence[str] | None = None) -> int:
    split = split_at_dashes(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(split.ours)
    if split.command is not None:
        if not getattr(args, "takes_command", False):
            parser.error(f"{split.ours[0]} takes no command after `--`")
        args.after_dashes = split.command
    try:
        result: int = args.command(args)
    except ConformanceError as error:
        print(f"record-trace: {shown_text(str(error))}", file=sys.stderr)
        return error.exit_status
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="record-trace",
        description="Record a VMM's use of /dev/kvm as a normalized trace document "
        "(schema kvm-conformance/2): from QEMU for a scenario, from any VMM command, or from "
        "an strace log.",
        epilog="examples:\n"
        "  record-trace qemu memory-1g                  # a shipped reference, re-recorded\n"
        "  record-trace vmm -o mine.yaml -- ./my-vmm guest.bin\n"
        "  record-trace strace-log qemu.strace -o qemu.yaml\n\n" + EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_version_option(parser)
    commands = parser.add_subparsers(required=True, metavar="SOURCE")

    qemu = add_command(
        commands,
        "qemu",
        summary="run QEMU under the tracer (a scenario of ours, or your command line) and write "
        "the reference trace",
        description="Record QEMU's use of /dev/kvm as a reference: one of kvm-conformance's "
        f"QEMU scenarios ({', '.join(sorted(QEMU_SCENARIOS))}), or any QEMU command line after "
        '`--`, for a project\'s scenarios to be held against (`reference = "FILE"`). QEMU '
        "runs pinned to one CPU with address space randomization off and must end with "
        "--exit-status; its output goes to FILE's .log beside it. An existing reference is "
        "replaced only with --force.",
        examples=[
            "record-trace qemu tiny-bios --force",
            "record-trace qemu -o qemu/boot.yaml --stdin 'quit\\n' -- qemu-system-x86_64 "
            "-accel kvm -m 64M -nographic -nodefaults -S -monitor stdio",
            "record-trace qemu -o qemu/bios.yaml --exit-status 33 -- qemu-system-x86_64 "
            "-accel kvm -bios fw.bin -device isa-debug-exit,iobase=0xf4,iosize=0x04 "
            "-nographic -nodefaults",
        ],
    )
    qemu.add_argument(
        "scenario",
        nargs="?",
        metavar="SCENARIO",
        help=f"one of: {', '.join(sorted(QEMU_SCENARIOS))} (or QEMU's command line after `--`)",
    )
    qemu.add_argument(
        "-o",
        "--output",
        type=Path,
        help="the reference file (default for SCENARIO in kvm-conformance's repository: "
        "conformance/qemu/references/SCENARIO.yaml)",
    )
    qemu.add_argument(
        "--qemu", metavar="PATH", help="QEMU binary for SCENARIO (default: qemu-system-x86_64)"
    )
    qemu.add_argument(
        "--exit-status",
        type=int,
        default=0,
        metavar="N",
        help="how QEMU ends when your command line ran to its end (default: 0)",
    )
    qemu.add_argument(
        "--stdin",
        default="",
        metavar="TEXT",
        help="QEMU's whole standard input, e.g. monitor commands ('quit\\n'; backslash "
        "escapes are decoded)",
    )
    qemu.add_argument("--force", action="store_true", help="replace an existing file")
    qemu.set_defaults(command=_record_qemu, takes_command=True)

    vmm = add_command(
        commands,
        "vmm",
        summary="run any VMM command under the tracer and write its normalized trace",
        description="Run a VMM command to its end under the tracer and write the normalized "
        "trace document (to stdout unless -o). The VMM reads our stdin and writes to our "
        "stdout and stderr (to stderr only, when the document goes to stdout); record-trace "
        "exits with the VMM's status.",
        examples=["record-trace vmm -o mine.yaml -- ./my-vmm guest.bin"],
    )
    vmm.add_argument("-o", "--output", type=Path, help="where to write (default: stdout)")
    vmm.add_argument("--force", action="store_true", help="replace an existing file")
    vmm.add_argument(
        "argv", nargs=argparse.REMAINDER, metavar="[--] CMD ARGS", help="the VMM to trace"
    )
    vmm.set_defaults(command=_record_vmm, takes_command=True)

    strace = add_command(
        commands,
        "strace-log",
        summary="import a `strace -f [-yy] [-X verbose]` log of a VMM",
        description="Read an strace log of a VMM (strace -f, best with -yy and -X verbose) and "
        "write the same normalized document the tracer would have given.",
        examples=["record-trace strace-log qemu.strace -o qemu.yaml"],
    )
    strace.add_argument("log", type=Path, metavar="LOG", help="the strace output file")
    strace.add_argument("-o", "--output", type=Path, help="where to write (default: stdout)")
    strace.add_argument(
        "--lenient", action="store_true", help="skip lines that cannot be parsed, and count them"
    )
    strace.add_argument("--force", action="store_true", help="replace an existing file")
    strace.set_defaults(command=_import_strace)
    return parser


def _record_qemu(args: argparse.Namespace) -> int:
    scenario, qemu, output = _qemu_to_record(args)
    log = qemu_log_path(output)
    # Both files are checked before QEMU runs: a user's file named like the log is theirs too.
    _refuse_overwrite(output, args.force)
    _refuse_overwrite(log, args.force)
    _progress(f"recording {scenario.name}: {' '.join(scenario.argv(qemu))}")
    recording = record_qemu(scenario, qemu)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConformanceError(f"cannot create {output.parent}: {error.strerror}") from None
    write_document(output, recording.document)
    write_text(log, recording.log)
    _progress(
        f"{recording.document.call_count()} calls on {len(recording.document.threads)} "
        f"thread(s) in {recording.seconds:.2f} s; wrote {output} (QEMU's output: {log})"
    )
    return 0


def _qemu_to_record(args: argparse.Namespace) -> tuple[QemuScenario, str, Path]:
    """The QEMU scenario to record, the binary, and the file to write."""
    output: Path | None = args.output
    command: list[str] | None = getattr(args, "after_dashes", None)
    if command is not None:
        if not command or args.scenario is not None:
            raise ConformanceError("qemu: give one SCENARIO, or QEMU's command line after `--`")
        if output is None:
            raise ConformanceError("qemu: give the reference file to write with -o FILE")
        name = output.name.removesuffix(".yaml")
        stdin = args.stdin.encode().decode("unicode_escape").encode()
        scenario = QemuScenario(
            name, f"{name}: {' '.join(command)}", tuple(command[1:]), stdin, args.exit_status
        )
        return scenario, find_qemu(command[0]), output
    if args.scenario is None:
        raise ConformanceError("qemu: give one SCENARIO, or QEMU's command line after `--`")
    scenario = qemu_scenario(args.scenario)
    if output is None:
        project = load_project(None, Path.cwd())
        if not project.is_this_repository:
            raise ConformanceError(
                f"qemu {scenario.name}: give the file to write with -o FILE (the shipped "
                "references are rewritten only from kvm-conformance's repository)"
            )
        output = project.root / REFERENCES_IN_SOURCE / f"{scenario.name}.yaml"
    return scenario, find_qemu(args.qemu), output


def _record_vmm(args: argparse.Namespace) -> int:
    command = traced_command(args)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise ConformanceError("vmm: give the VMM's command after `--`")
    if args.output is not None:
        _refuse_overwrite(args.output, args.force)
    _progress(f"tracing {' '.join(command)}")
    sys.stdout.flush()
    traced = capture(
        command,
        {"tool": "vmm", "argv": list(command)},
        stdout=None if args.output is not None else _STDERR_FD,
    )
    outcome = traced.outcome
    if outcome.message is not None:
        _progress(outcome.message)
    interrupted = outcome.result.interrupted_by
    if interrupted is not None:
        _progress(f"interrupted by signal {interrupted}: nothing written")
        return _SIGNALLED + interrupted
    traced.document.source["exit_status"] = outcome.exit_status
    _progress(
        f"{traced.document.call_count()} calls in {traced.seconds:.2f} s; "
        f"the VMM exited with status {outcome.exit_status}"
    )
    _write(traced.document, args.output)
    return outcome.exit_status


def _import_strace(args: argparse.Namespace) -> int:
    if args.output is not None:
        _refuse_overwrite(args.output, args.force)
    imported = import_strace_log(args.log, lenient=args.lenient)
    if imported.skipped_lines:
        _progress(f"{args.log}: skipped {imported.skipped_lines} line(s) that could not be parsed")
    _write(imported.document, args.output)
    return 0


def _write(document: TraceDocument, output: Path | None) -> None:
    if output is None:
        sys.stdout.write(dump_document(document))
        return
    write_document(output, document)
    _progress(f"wrote {output}")


def qemu_log_path(output: Path) -> Path:
    """Where QEMU's own output goes beside its trace: NAME.log for NAME.yaml, and OUTPUT.log
    for any other name (`-o trace.log` must not put the log over the trace)."""
    if output.suffix == ".yaml":
        return output.with_suffix(".log")
    return output.with_name(output.name + ".log")


def _refuse_overwrite(output: Path, force: bool) -> None:
    if output.exists() and not force:
        raise OutputExistsError(f"{output} exists; give --force to replace it")


def _progress(message: str) -> None:
    print(f"record-trace: {shown_text(message)}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
