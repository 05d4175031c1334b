"""`lint`: check a trace (a file, or a command traced now) against the KVM usage rules."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from conformance.cli.arguments import add_lint_config_option, command_after_dashes, lint_config
from conformance.lint import has_errors, lint
from conformance.lint.output import render_json, render_text
from conformance.lint.sarif import render_sarif
from conformance.model.document import TraceDocument
from conformance.model.errors import ConformanceError
from conformance.model.printable import printable_text
from conformance.normalize.capture import capture
from conformance.snapshot.store import read_document

EXIT_FINDINGS = 1
_STDERR_FD = 2  # the process's own stderr, whatever sys.stderr has been replaced by


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "lint",
        help="check a trace (TRACE.yaml, or `-- CMD ARGS...` traced now) against the KVM usage "
        "rules; exit 1 when a rule reports an error",
    )
    parser.add_argument("--format", choices=("text", "json", "sarif"), default="text")
    add_lint_config_option(parser)
    parser.add_argument("argv", nargs=argparse.REMAINDER, metavar="TRACE.yaml | -- CMD ARGS")
    parser.set_defaults(command=_lint)


def _lint(args: argparse.Namespace) -> int:
    config = lint_config(args)
    label: str | None
    if args.argv[:1] == ["--"]:
        command = command_after_dashes(args.argv)
        if not command:
            raise ConformanceError("lint: give a command after `--`")
        document, label = _traced(command), None
        shown = " ".join(command)
    elif len(args.argv) == 1:
        label = shown = args.argv[0]
        document = read_document(Path(label))
    else:
        raise ConformanceError("lint: give one TRACE.yaml, or a command after `--`")
    findings = lint(document, config)
    if args.format == "sarif":
        sys.stdout.write(render_sarif(findings, label, config))
    elif args.format == "json":
        sys.stdout.write(render_json(findings, shown, config))
    else:
        sys.stdout.write(printable_text(render_text(findings, shown, config)))
    return EXIT_FINDINGS if has_errors(findings) else 0


def _traced(command: list[str]) -> TraceDocument:
    """Run the command under the tracer; its stdout goes to our stderr, so that the report on
    stdout stays machine-readable."""
    traced = capture(
        command, {"tool": "kvm-conformance lint", "argv": list(command)}, stdout=_STDERR_FD
    )
    if not traced.outcome.opened_kvm:
        raise ConformanceError(f"lint: {traced.outcome.message}")
    return traced.document
