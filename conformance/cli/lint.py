"""`lint`: check a trace (a file, or a command traced now) against the KVM usage rules."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from conformance.cli.arguments import (
    EXIT_FAILED,
    add_command,
    add_lint_config_option,
    lint_config,
    project_url,
    traced_command,
    version,
)
from conformance.cli.documents import read_trace
from conformance.lint import has_errors, lint
from conformance.lint.output import render_json, render_text
from conformance.lint.sarif import render_sarif, repository_root
from conformance.model.document import TraceDocument
from conformance.model.errors import ConformanceError
from conformance.normalize.capture import capture
from conformance.snapshot.store import SnapshotError, write_document

_STDERR_FD = 2  # the process's own stderr, whatever sys.stderr has been replaced by
LIVE_TRACE = Path("kvm-conformance-lint.yaml")  # where `lint -- CMD` keeps the trace it lints


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        commands,
        "lint",
        summary="check a trace (a file, or `-- CMD` traced now) against the KVM usage rules",
        description="Check a trace against the KVM usage rules of docs/rules.md, each drawn "
        "from a real VMM incident. The trace is a file (a normalized document, or a raw "
        "`trace --format yaml` stream) or a command traced now (after `--`), whose trace is "
        "written to --trace-output so that every finding points at a line of a file. Exit 1 "
        "when a rule reports an error (warnings alone exit 0). Rules are disabled per project "
        'in pyproject.toml: [tool.kvm-conformance] disable = [{id = "KVMC008", reason = "..."}].',
        examples=[
            "kvm-conformance lint mine.yaml",
            "kvm-conformance lint mine.yaml --format sarif > lint.sarif",
            "kvm-conformance lint --format json -- ./my-vmm guest.bin",
        ],
    )
    parser.add_argument("trace", nargs="?", type=Path, metavar="TRACE.yaml", help="the trace")
    parser.add_argument(
        "--format",
        choices=("text", "json", "sarif"),
        default="text",
        help="text: one line per finding (default); json; sarif: SARIF 2.1.0 for code scanning",
    )
    parser.add_argument(
        "--trace-output",
        type=Path,
        default=LIVE_TRACE,
        metavar="FILE",
        help=f"with `-- CMD`: write the trace here, replacing it (default: ./{LIVE_TRACE})",
    )
    add_lint_config_option(parser)
    parser.set_defaults(command=_lint, takes_command=True)


def _lint(args: argparse.Namespace) -> int:
    config = lint_config(args)
    command = traced_command(args)
    trace_file: Path | None = args.trace
    if trace_file is not None and command:
        raise ConformanceError("lint: give one TRACE.yaml or a command after `--`, not both")
    if trace_file is None and not command:
        raise ConformanceError("lint: give a TRACE.yaml, or a command to trace after `--`")
    if command:
        trace_file = args.trace_output
        _keep(_traced(command), trace_file)
    assert trace_file is not None
    document = read_trace(trace_file)  # read back: findings carry their line in the file
    findings = lint(document, config)
    if args.format == "sarif":
        root = repository_root(Path.cwd())
        sys.stdout.write(
            render_sarif(
                findings,
                trace_file,
                config,
                root=root,
                version=version(),
                home=project_url("Homepage"),
                docs=project_url("Documentation"),
            )
        )
    elif args.format == "json":
        sys.stdout.write(render_json(findings, str(trace_file), config))
    else:
        sys.stdout.write(render_text(findings, str(trace_file), config))
    return EXIT_FAILED if has_errors(findings) else 0


def _traced(command: list[str]) -> TraceDocument:
    """Run the command under the tracer; its stdout goes to our stderr, so that the report on
    stdout stays machine-readable."""
    traced = capture(
        command, {"tool": "kvm-conformance lint", "argv": list(command)}, stdout=_STDERR_FD
    )
    if not traced.outcome.opened_kvm:
        raise ConformanceError(f"lint: {traced.outcome.message}")
    return traced.document


def _keep(document: TraceDocument, path: Path) -> None:
    try:
        write_document(path, document)
    except SnapshotError as error:
        raise ConformanceError(f"lint: cannot keep the trace: {error}") from None
