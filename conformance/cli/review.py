"""`review`: step through pending snapshots (NAME.yaml.new) and accept, reject or skip each.

Pending snapshots are what a run saw where a snapshot was missing or differed, written beside it
by `check --pending` or `pytest --kvm-snapshot-pending` (insta's .snap.new). For each, `review`
shows the difference from the snapshot (or the start of a new one) and asks: accept (the
pending file replaces the snapshot, in one rename), reject (it is removed) or skip (it stays).
`--accept-all` / `--reject-all` decide every one without asking, for scripts. As everywhere,
nothing is written when CI is set unless --force is given.

Exit 0 when done (whatever was decided), 2 for a usage or environment error (no terminal to
ask on, an unreadable pending file), 130 when interrupted (decisions already made stay made).
"""

from __future__ import annotations

import argparse
import enum
import sys
from pathlib import Path

from conformance.cli.configuration import add_config_option, project
from conformance.compare.regression import compare_documents
from conformance.model.errors import ConformanceError
from conformance.report.diff import render_comparison, use_color
from conformance.snapshot.store import SnapshotStore, dump_document, read_document, running_on_ci

_NEW_SNAPSHOT_LINES_SHOWN = 40
_EXIT_INTERRUPTED = 130
_EXAMPLES = """\
examples:
  kvm-conformance check --pending && kvm-conformance review
  kvm-conformance review boot                 only the pending snapshot of scenario boot
  kvm-conformance review --accept-all         accept every pending snapshot, no questions
  kvm-conformance review --snapshots tests/snapshots --reject-all
"""


class ReviewError(ConformanceError):
    """Review cannot ask or cannot write."""


class Decision(enum.Enum):
    ACCEPT = "accepted"
    REJECT = "rejected"
    SKIP = "skipped"


_ANSWERS = {"a": Decision.ACCEPT, "r": Decision.REJECT, "s": Decision.SKIP}


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "review",
        help="step through pending snapshots (NAME.yaml.new): show each difference, then "
        "accept, reject or skip it",
        description="Step through the pending snapshots (NAME.yaml.new) that `check --pending`\n"
        "or `pytest --kvm-snapshot-pending` wrote beside missing or differing snapshots:\n"
        "each difference is shown, then accept (the pending file replaces the snapshot),\n"
        "reject (it is removed) or skip (it stays for later).",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    decide = parser.add_mutually_exclusive_group()
    decide.add_argument(
        "--accept-all", action="store_true", help="accept every pending snapshot without asking"
    )
    decide.add_argument(
        "--reject-all", action="store_true", help="reject every pending snapshot without asking"
    )
    parser.add_argument(
        "--snapshots",
        type=Path,
        metavar="DIR",
        help="the snapshot directory (default: the project's `snapshots`, ./expected in its root)",
    )
    parser.add_argument(
        "--force", action="store_true", help="write even when CI is set (refused otherwise)"
    )
    add_config_option(parser)
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help="review only these (default: every one)"
    )
    parser.set_defaults(command=_review)


def _review(args: argparse.Namespace) -> int:
    directory: Path = args.snapshots or project(args).snapshots
    store = SnapshotStore(directory)
    names = [name for name in store.pending() if not args.names or name in args.names]
    unknown = sorted(set(args.names) - set(names))
    if unknown:
        raise ReviewError(f"no pending snapshot for {', '.join(unknown)} in {directory}")
    if not names:
        print(f"no pending snapshots in {directory}")
        return 0
    if running_on_ci() and not args.force:
        raise ReviewError("CI is set: review writes nothing on CI (add --force to write)")
    batch = Decision.ACCEPT if args.accept_all else Decision.REJECT if args.reject_all else None
    if batch is None and not sys.stdin.isatty():
        raise ReviewError(
            "review asks on a terminal; from a script, use --accept-all or --reject-all"
        )
    decided: dict[Decision, list[str]] = {decision: [] for decision in Decision}
    try:
        for position, name in enumerate(names, start=1):
            if batch is None:
                print(f"[{position}/{len(names)}] {_shown(store, name)}", end="")
            decision = batch or _ask(name)
            _apply(store, name, decision)
            decided[decision].append(name)
    except KeyboardInterrupt:
        print()
        _summary(decided)
        return _EXIT_INTERRUPTED
    _summary(decided)
    return 0


def _shown(store: SnapshotStore, name: str) -> str:
    """The difference the pending snapshot makes, as the terminal diff shows any difference."""
    new = read_document(store.pending_path_for(name))
    old = store.load(name)
    if old is not None:
        comparison = compare_documents(old, new, scenario=name)
        return render_comparison(comparison, color=use_color(sys.stdout))
    lines = dump_document(new).splitlines()
    shown = "\n".join(f"    + {line}" for line in lines[:_NEW_SNAPSHOT_LINES_SHOWN])
    more = len(lines) - _NEW_SNAPSHOT_LINES_SHOWN
    rest = f"\n    … {more} more lines in {store.pending_path_for(name)}" if more > 0 else ""
    return f"{name}: new snapshot ({new.call_count()} calls)\n{shown}{rest}\n"


def _ask(name: str) -> Decision:
    while True:
        try:
            answer = input(f"{name}: [a]ccept, [r]eject, [s]kip? ").strip().lower()
        except EOFError:  # Ctrl-D: leave this one and the rest as they are
            print()
            return Decision.SKIP
        if answer[:1] in _ANSWERS:
            return _ANSWERS[answer[:1]]


def _apply(store: SnapshotStore, name: str, decision: Decision) -> None:
    if decision is Decision.ACCEPT:
        store.accept_pending(name)
    elif decision is Decision.REJECT:
        store.reject_pending(name)
    if decision is not Decision.SKIP:
        print(f"{name}: {decision.value}")


def _summary(decided: dict[Decision, list[str]]) -> None:
    parts = [f"{len(names)} {decision.value}" for decision, names in decided.items() if names]
    print(", ".join(parts) or "nothing decided")
