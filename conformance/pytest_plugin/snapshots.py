"""One test session's snapshot assertions: compare a trace with its snapshot, or write it.

The pytest plugin's engine, kept free of pytest so that it reads (and is tested) on its own.
Without `update`, a trace must equal its stored snapshot; a missing snapshot fails too, so that
a new test cannot pass by comparing with nothing. With `update`, the trace is stored (created,
updated or left unchanged) and the assertion passes.

Snapshots are written when the assertion runs, not at session end as syrupy does: syrupy batches
because several snapshots share one file, while here each snapshot is a file of its own, written
atomically (temp file + rename). An interrupted session keeps every snapshot it confirmed and no
half-written one.
"""

from __future__ import annotations

from pathlib import Path

from conformance.compare.decisions import LeftOut
from conformance.compare.regression import CompareOptions, Comparison, compare_documents
from conformance.model.document import TraceDocument
from conformance.model.errors import ConformanceError
from conformance.report.diff import render_comparison
from conformance.report.left_out import render_left_out
from conformance.snapshot.store import SnapshotStore, StoreReport


class SnapshotMismatch(ConformanceError):
    """A trace that differs from its snapshot; the message is the rendered diff."""

    def __init__(self, comparison: Comparison, rendered: str) -> None:
        super().__init__(rendered)
        self.comparison = comparison


class SnapshotMissing(ConformanceError):
    """No snapshot to compare with, and updating was not asked for."""


class SnapshotSession:
    def __init__(self, directory: Path, *, update: bool, color: bool) -> None:
        self.store = SnapshotStore(directory, update=update)
        self._color = color
        self._compared: set[str] = set()
        self._differing: set[str] = set()
        self._missing: set[str] = set()
        self._left_out: list[LeftOut] = []  # differences that were not VMM decisions

    @property
    def asserted(self) -> bool:
        """Whether any test asserted a snapshot: the terminal summary is shown only then."""
        report = self.store.report()
        written = report.created or report.updated or report.unchanged
        return bool(self._compared or self._missing or written)

    def assert_matches(
        self, name: str, document: TraceDocument, options: CompareOptions | None = None
    ) -> None:
        """Raise SnapshotMismatch / SnapshotMissing unless `document` equals snapshot `name`;
        when updating, store it instead. SnapshotError for a file that cannot be read.
        """
        if self.store.update:
            self.store.save(name, document)
            return
        expected = self.store.load(name)
        if expected is None:
            self._missing.add(name)
            raise SnapshotMissing(
                f"no snapshot {self.store.path_for(name)}; "
                "run pytest with --snapshot-update to create it"
            )
        comparison = compare_documents(expected, document, scenario=name, options=options)
        self._compared.add(name)
        self._left_out.extend(comparison.left_out)
        if not comparison.ok:
            self._differing.add(name)
            rendered = render_comparison(
                comparison, color=self._color, accept="pytest --snapshot-update"
            )
            raise SnapshotMismatch(comparison, rendered)

    def summary_lines(self, *, complete_run: bool, verbose: bool = False) -> list[str]:
        """What this session did to the snapshots, syrupy-style; `unused` only when every test
        ran (after -k, -m or -x, snapshots of tests that did not run would look unused);
        `verbose`: also what the comparisons left out as not VMM decisions, and why.
        """
        report = self.store.report()
        if self.store.update:
            lines = [_written(report)]
        else:
            lines = [
                f"{len(self._compared)} compared, {len(self._differing)} differing"
                + (f", {len(self._missing)} missing" if self._missing else "")
            ]
        if verbose and self._compared:
            lines.extend(render_left_out(self._left_out))
        if complete_run and report.unused:
            files = ", ".join(self.store.path_for(name).name for name in report.unused)
            lines.append(f"{len(report.unused)} unused (not deleted): {files}")
        return lines


def _written(report: StoreReport) -> str:
    parts = [
        f"{len(names)} {outcome}" + (f" ({', '.join(names)})" if outcome != "unchanged" else "")
        for outcome, names in (
            ("created", report.created),
            ("updated", report.updated),
            ("unchanged", report.unchanged),
        )
        if names
    ]
    return ", ".join(parts) or "no snapshots written"
