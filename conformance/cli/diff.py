"""`diff SUBJECT REFERENCE`: check a VMM's trace against QEMU's reference, as its allowances permit.

REFERENCE is a file, or the name of a reference shipped with kvm-conformance (`memory-1g`,
`setup`, `tiny-bios`). Exit 0 when every deviation is allowed, 1 when one is not, 2 for
unreadable input. The allowances default to the file beside the reference
(REFERENCE.allowances.yaml), if any.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from conformance.cli.arguments import EXIT_FAILED, add_command
from conformance.cli.documents import read_trace
from conformance.compare.allowances import Allowances, allowances_beside, load_allowances
from conformance.compare.conformance import compare_with_reference
from conformance.gate.references import shipped_reference, shipped_reference_names
from conformance.model.errors import ConformanceError
from conformance.report.deviations import render_conformance, side_by_side
from conformance.report.host import DIFF_HOSTS, host_block
from conformance.report.html import conformance_page
from conformance.report.left_out import render_left_out


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_command(
        commands,
        "diff",
        summary="check a VMM's trace against a QEMU reference, as its allowances permit",
        description="Check that each call of SUBJECT appears in REFERENCE's sequence, in "
        "order, with the same inputs, unless an allowance (REFERENCE.allowances.yaml: kind, "
        "call, field and a reason) permits the deviation. Reference calls the subject does not "
        "make are not deviations. Deviations with one cause print as one line; -v prints each. "
        "Either file may be a normalized trace or a raw `trace --format yaml` stream.",
        examples=[
            "kvm-conformance diff mine.yaml memory-1g      # a reference shipped with us",
            "kvm-conformance diff mine.yaml tiny-bios --html report.html",
            "kvm-conformance diff mine.yaml ref.yaml --allowances ours.allowances.yaml -v",
        ],
    )
    parser.add_argument("subject", type=Path, metavar="SUBJECT.yaml", help="the VMM's trace")
    parser.add_argument(
        "reference",
        metavar="REFERENCE",
        help="the trace to fit inside (QEMU's): a file, or a shipped reference by name "
        f"({', '.join(shipped_reference_names())})",
    )
    parser.add_argument(
        "--allowances",
        type=Path,
        metavar="ALLOWANCES.yaml",
        help="the deviations allowed, each with its reason (default: "
        "REFERENCE.allowances.yaml if it exists)",
    )
    parser.add_argument(
        "--html", type=Path, metavar="FILE", help="also write a self-contained HTML report"
    )
    parser.add_argument(
        "--side-by-side", action="store_true", help="also print the aligned sequences"
    )
    parser.add_argument(
        "-v",
        "--full",
        action="store_true",
        help="every deviation on its own line and the memory layout, no line cut",
    )
    parser.add_argument(
        "--not-decisions",
        action="store_true",
        help="also say how many differences were left out as not VMM decisions (clocks, "
        "padding, fields the kernel ignores) and why",
    )
    parser.set_defaults(command=_diff)


def _diff(args: argparse.Namespace) -> int:
    subject = read_trace(args.subject)
    reference_path = Path(args.reference)
    if not reference_path.exists() and "/" not in args.reference:
        reference_path = shipped_reference(args.reference)
    reference = read_trace(reference_path)
    allowances_path: Path | None = args.allowances
    if allowances_path is None and allowances_beside(reference_path).exists():
        allowances_path = allowances_beside(reference_path)
    allowances = load_allowances(allowances_path) if allowances_path is not None else Allowances()
    result = compare_with_reference(subject, reference, allowances)
    name = str(subject.source.get("scenario") or args.subject)
    sys.stdout.write(render_conformance(result, name, full=args.full))
    sys.stdout.write(host_block(result.hosts, *DIFF_HOSTS))
    if args.not_decisions:
        print("\n".join(render_left_out(result.left_out)))
    if args.side_by_side:
        for thread in result.rows:
            print(f"\nthread {thread}: subject | QEMU")
            print("\n".join(side_by_side(result, thread)))
    if args.html is not None:
        write_html(args.html, conformance_page(result, name))
    return 0 if result.ok else EXIT_FAILED


def write_html(path: Path, page: str) -> None:
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as error:
        raise ConformanceError(f"cannot write {path}: {error.strerror}") from None
