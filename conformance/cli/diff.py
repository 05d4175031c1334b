"""`diff SUBJECT REFERENCE`: check a VMM's trace against QEMU's reference, as its allowances permit.

Exit 0 when every deviation is allowed, 1 when one is not, 2 for unreadable input. The
allowances default to the file beside the reference (REFERENCE.allowances.yaml), if any.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from conformance.compare.allowances import Allowances, allowances_beside, load_allowances
from conformance.compare.conformance import compare_with_reference
from conformance.model.errors import ConformanceError
from conformance.model.printable import printable_text
from conformance.report.deviations import render_conformance, side_by_side
from conformance.report.html import render_html
from conformance.snapshot.store import read_document

EXIT_DEVIATION = 1


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "diff",
        help="check a VMM's trace against a QEMU reference (exit 0 conforms, 1 deviates, "
        "2 unreadable input)",
    )
    parser.add_argument("subject", type=Path, metavar="SUBJECT.yaml")
    parser.add_argument("reference", type=Path, metavar="REFERENCE.yaml")
    parser.add_argument(
        "--allowances",
        type=Path,
        metavar="ALLOWANCES.yaml",
        help="the deviations allowed, each with its reason (default: "
        "REFERENCE.allowances.yaml if it exists)",
    )
    parser.add_argument("--html", type=Path, metavar="OUT", help="also write an HTML report")
    parser.add_argument(
        "--side-by-side", action="store_true", help="print the aligned sequences too"
    )
    parser.set_defaults(command=_diff)


def _diff(args: argparse.Namespace) -> int:
    subject = read_document(args.subject)
    reference = read_document(args.reference)
    allowances_path: Path | None = args.allowances
    if allowances_path is None and allowances_beside(args.reference).exists():
        allowances_path = allowances_beside(args.reference)
    allowances = load_allowances(allowances_path) if allowances_path is not None else Allowances()
    result = compare_with_reference(subject, reference, allowances)
    name = str(subject.source.get("scenario") or args.subject)
    sys.stdout.write(printable_text(render_conformance(result, name)))
    if args.side_by_side:
        for thread in result.rows:
            print(printable_text(f"\nthread {thread}: subject | QEMU"))
            print(printable_text("\n".join(side_by_side(result, thread))))
    if args.html is not None:
        try:
            args.html.write_text(printable_text(render_html(result, name)), encoding="utf-8")
        except OSError as error:
            raise ConformanceError(f"cannot write {args.html}: {error.strerror}") from None
    return 0 if result.ok else EXIT_DEVIATION
