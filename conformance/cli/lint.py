"""`lint`: check a trace (a file, or a command traced now) against the KVM usage rules."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from conformance.lint import LintConfig, find_pyproject, has_errors, lint, load_config
from conformance.lint.output import render_json, render_text
from conformance.lint.sarif import render_sarif
from conformance.model.document import TraceDocument, Value
from conformance.model.errors import ConformanceError
from conformance.normalize.normalizer import Normalizer
from conformance.snapshot.store import read_document
from conformance.tracer import trace

EXIT_FINDINGS = 1
_STDERR_FD = 2  # the process's own stderr, whatever sys.stderr has been replaced by


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "lint",
        help="check a trace (TRACE.yaml, or `-- CMD ARGS...` traced now) against the KVM usage "
        "rules; exit 1 when a rule reports an error",
    )
    parser.add_argument("--format", choices=("text", "json", "sarif"), default="text")
    parser.add_argument(
        "--config",
        metavar="PYPROJECT",
        type=Path,
        help="read [tool.kvm-conformance] from this file (default: the nearest pyproject.toml "
        "from the current directory up)",
    )
    parser.add_argument("argv", nargs=argparse.REMAINDER, metavar="TRACE.yaml | -- CMD ARGS")
    parser.set_defaults(command=_lint)


def _lint(args: argparse.Namespace) -> int:
    config = _config(args.config)
    if args.argv[:1] == ["--"]:
        command = list(args.argv[1:])
        if not command:
            raise ConformanceError("lint: give a command after `--`")
        document, label = _traced(command), None
    elif len(args.argv) == 1:
        label = args.argv[0]
        document = read_document(Path(label))
    else:
        raise ConformanceError("lint: give one TRACE.yaml, or a command after `--`")
    findings = lint(document, config)
    shown = label if label is not None else " ".join(args.argv[1:])
    if args.format == "sarif":
        sys.stdout.write(render_sarif(findings, label, config))
    elif args.format == "json":
        sys.stdout.write(render_json(findings, shown, config))
    else:
        sys.stdout.write(render_text(findings, shown, config))
    return EXIT_FINDINGS if has_errors(findings) else 0


def _config(path: Path | None) -> LintConfig:
    found = path if path is not None else find_pyproject(Path.cwd())
    return load_config(found) if found is not None else LintConfig()


def _traced(command: list[str]) -> TraceDocument:
    """Run the command under the tracer; its stdout goes to our stderr, so that the report on
    stdout stays machine-readable."""
    normalizer = Normalizer({"tool": "kvm-conformance lint", "argv": list[Value](command)})
    outcome = trace(command, normalizer.add, stdout=_STDERR_FD)
    if not outcome.opened_kvm:
        raise ConformanceError(f"lint: {outcome.message}")
    return normalizer.finish()
