"""One test session's snapshot assertions: compare traces with snapshots, and what to write.

The pytest plugin's engine, kept free of pytest so that it reads (and is tested) on its own.
Without `update`, a trace must equal its stored snapshot; a missing one fails too, so that a new
test cannot pass by comparing with nothing. With `update`, the assertion passes and the trace is
what the snapshot will be. With `pending`, a missing or differing snapshot's trace is written
beside it as NAME.yaml.new for `kvm-conformance review` (the test still fails).

Nothing is written while tests run: as syrupy does, the session writes at its end, and only
when it was not interrupted (`finish`). A session is therefore plain data until then, which is
also how pytest-xdist's workers hand theirs to the controller, the one writer (`export`,
`merge`). Each snapshot name belongs to one test: a second test claiming it fails, naming
both, and a name two workers' tests claimed is written by neither.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from conformance.compare.decisions import LeftOut
from conformance.compare.regression import CompareOptions, Comparison, compare_documents
from conformance.model.document import TraceDocument
from conformance.model.errors import ConformanceError
from conformance.report.diff import render_comparison
from conformance.report.host import host_block
from conformance.report.left_out import render_left_out
from conformance.snapshot.store import SnapshotStore, StoreReport, dump_document

UPDATE_OPTION = "--kvm-snapshot-update"


class SnapshotMismatch(ConformanceError):
    """A trace that differs from its snapshot; the message is the rendered diff."""

    def __init__(self, comparison: Comparison, rendered: str) -> None:
        super().__init__(rendered)
        self.comparison = comparison


class SnapshotMissing(ConformanceError):
    """No snapshot to compare with, and updating was not asked for."""


class SnapshotNameClash(ConformanceError):
    """Two tests claim one snapshot name."""


@dataclass(slots=True)
class SessionRecord:
    """What a session saw and means to write: names -> the test that claimed them, and texts.
    Plain data, so that it crosses from an xdist worker to the controller as it is."""

    claims: dict[str, str] = field(default_factory=dict)  # snapshot name -> test id
    compared: set[str] = field(default_factory=set)
    differing: set[str] = field(default_factory=set)
    missing: set[str] = field(default_factory=set)
    updates: dict[str, str] = field(default_factory=dict)  # name -> its new YAML
    pending: dict[str, str] = field(default_factory=dict)  # name -> YAML for NAME.yaml.new
    settled: set[str] = field(default_factory=set)  # matching now: a stale NAME.yaml.new goes
    clashes: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> both tests
    # The host block of snapshots recorded on another host -> those snapshots' names.
    hosts: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Ending:
    """How the session ended, as far as writing and reporting snapshots go."""

    interrupted: bool  # Ctrl-C, SIGTERM, a worker that never reported: nothing is written
    complete: bool  # every test of the suite ran (no -k, --lf, path selection, -x stop)
    all_passed: bool  # and none failed or was skipped: unused snapshots may then be deleted
    delete_unused: bool  # asked for (--kvm-snapshot-delete-unused)
    not_run: frozenset[str] = frozenset()  # default snapshot names of tests that did not pass


class SnapshotSession:
    def __init__(
        self, directory: Path, *, update: bool, pending: bool, color: bool, tool: str
    ) -> None:
        self.store = SnapshotStore(directory, update=update)
        self.tool = tool  # `source: tool:` of the snapshots the session's traces write
        self.pending_enabled = pending
        self._color = color
        self.record = SessionRecord()
        # Differences that were not VMM decisions (-v lists them); this process's comparisons
        # only: under xdist each worker's stay with it.
        self._left_out: list[LeftOut] = []
        self._report: StoreReport | None = None
        self._unused: list[str] = []
        self._deleted: list[str] = []
        self._interrupted = False
        self._write_error: str | None = None

    @property
    def update(self) -> bool:
        return self.store.update

    @property
    def asserted(self) -> bool:
        """Whether any test asserted a snapshot: the terminal summary is shown only then."""
        return bool(self.record.claims or self.record.clashes)

    def claim(self, name: str, test: str) -> None:
        """Snapshot `name` is `test`'s; SnapshotNameClash when another test has it."""
        self.store.path_for(name)  # a name no file can have fails here, in its test
        owner = self.record.claims.setdefault(name, test)
        if owner != test:
            self.record.clashes.setdefault(name, (owner, test))
            raise SnapshotNameClash(
                f"snapshot {name!r} is claimed by two tests: {owner} and {test}; give one of "
                "them another name (matches(NAME))"
            )

    def assert_matches(
        self,
        name: str,
        document: TraceDocument,
        test: str,
        options: CompareOptions | None = None,
    ) -> None:
        """Raise SnapshotMismatch / SnapshotMissing unless `document` equals snapshot `name`;
        when updating, it becomes the snapshot at the session's end. SnapshotError for a file
        that cannot be read, SnapshotNameClash for a name another test claimed."""
        self.claim(name, test)
        text = dump_document(document)
        if self.store.update:
            self.record.updates[name] = text
            return
        expected = self.store.load(name)
        if expected is None:
            self.record.missing.add(name)
            self._stage_pending(name, text)
            raise SnapshotMissing(
                f"no snapshot {self.store.path_for(name)}; run pytest with {UPDATE_OPTION} to "
                f"create it{self._pending_note(name)}"
            )
        comparison = compare_documents(expected, document, scenario=name, options=options)
        self.record.compared.add(name)
        block = host_block(comparison.hosts, "snapshot recorded on", "running on")
        if block:
            self.record.hosts.setdefault(block, []).append(name)
        self._left_out.extend(comparison.left_out)
        if comparison.ok:
            if self.pending_enabled:
                self.record.settled.add(name)
            return
        self.record.differing.add(name)
        self._stage_pending(name, text)
        rendered = block + render_comparison(
            comparison, color=self._color, accept=f"pytest {UPDATE_OPTION}"
        )
        rendered += self._pending_note(name)
        raise SnapshotMismatch(comparison, rendered.rstrip("\n"))

    def _stage_pending(self, name: str, text: str) -> None:
        if self.pending_enabled:
            self.record.pending[name] = text

    def _pending_note(self, name: str) -> str:
        if not self.pending_enabled:
            return ""
        return f"\n(pending: {self.store.pending_path_for(name).name}; `kvm-conformance review`)"

    # -- xdist: workers hand their records to the controller ---------------------------------

    def export(self) -> dict[str, object]:
        """The record as basic types (what execnet carries)."""
        record = self.record
        return {
            "claims": dict(record.claims),
            "compared": sorted(record.compared),
            "differing": sorted(record.differing),
            "missing": sorted(record.missing),
            "updates": dict(record.updates),
            "pending": dict(record.pending),
            "settled": sorted(record.settled),
            "clashes": {name: list(tests) for name, tests in record.clashes.items()},
            "hosts": {block: list(names) for block, names in record.hosts.items()},
        }

    def merge(self, exported: Mapping[str, object]) -> None:
        """Add a worker's record; a name claimed by tests of two workers is a clash."""
        record = self.record
        for name, test in _mapping(exported, "claims").items():
            owner = record.claims.setdefault(name, str(test))
            if owner != test:
                record.clashes.setdefault(name, (owner, str(test)))
        for name, tests in _mapping(exported, "clashes").items():
            first, second = (str(test) for test in _list(tests))
            record.clashes.setdefault(name, (first, second))
        record.compared.update(map(str, _list(exported.get("compared"))))
        record.differing.update(map(str, _list(exported.get("differing"))))
        record.missing.update(map(str, _list(exported.get("missing"))))
        record.settled.update(map(str, _list(exported.get("settled"))))
        record.updates.update({k: str(v) for k, v in _mapping(exported, "updates").items()})
        record.pending.update({k: str(v) for k, v in _mapping(exported, "pending").items()})
        for block, names in _mapping(exported, "hosts").items():
            record.hosts.setdefault(block, []).extend(map(str, _list(names)))

    # -- the end of the session ------------------------------------------------------------

    def finish(self, ending: Ending) -> None:
        """Write what the session decided, unless it was interrupted; find unused snapshots
        when every test ran, and delete them only when asked and every test passed. A clashing
        name is written by neither of its tests. A KeyboardInterrupt while writing comes after
        the whole write (the store holds the signal until then) and is passed on."""
        self._interrupted = ending.interrupted
        if ending.interrupted:
            return
        record = self.record
        for name in sorted(set(record.updates) - set(record.clashes)):
            self.store.stage_text(name, record.updates[name])
        for name in sorted(set(record.pending) - set(record.clashes)):
            self.store.stage_pending(name, record.pending[name])
        for name in sorted(record.settled - set(record.pending)):
            self.store.stage_pending_removal(name)
        if ending.complete:
            # Only the plugin's own traces: scenario snapshots in the same directory are
            # `check`'s to report, whether or not a test matched them.
            used = set(record.claims) | ending.not_run
            ours = self.store.written_by(frozenset({self.tool}))
            self._unused = [name for name in ours if name not in used]
            if ending.delete_unused and ending.all_passed:
                for name in self._unused:
                    self.store.stage_removal(name)
                self._deleted = list(self._unused)
        self._report = self.store.report()
        self.store.commit()

    def summary_lines(self, *, verbose: bool = False) -> list[str]:
        """What this session did to the snapshots, syrupy-style; `verbose`: also what the
        comparisons left out as not VMM decisions, and why."""
        record = self.record
        lines = [
            f"snapshot {name!r} claimed by {first} and {second}: not written"
            for name, (first, second) in sorted(record.clashes.items())
        ]
        if self._interrupted:
            return [*lines, "interrupted: no snapshot written"]
        report = self._report or StoreReport()
        if self.store.update:
            lines.append(_written(report))
        else:
            lines.append(
                f"{len(record.compared)} compared, {len(record.differing)} differing"
                + (f", {len(record.missing)} missing" if record.missing else "")
            )
            if verbose and record.compared:
                lines.extend(render_left_out(self._left_out))
            for block, names in sorted(record.hosts.items()):
                lines.append(f"{len(names)} recorded on another host: {', '.join(sorted(names))}")
                lines.extend(block.splitlines())
        if report.pending:
            lines.append(
                f"{len(report.pending)} pending (NAME.yaml.new): {', '.join(report.pending)}; "
                "`kvm-conformance review` to accept or reject"
            )
        if self._deleted:
            lines.append(f"{len(self._deleted)} unused, deleted: {self._files(self._deleted)}")
        elif self._unused:
            lines.append(f"{len(self._unused)} unused (not deleted): {self._files(self._unused)}")
        return lines

    def _files(self, names: list[str]) -> str:
        return ", ".join(self.store.path_for(name).name for name in names)


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


def _mapping(exported: Mapping[str, object], key: str) -> Mapping[str, object]:
    value = exported.get(key)
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[object]:
    return list(value) if isinstance(value, list | tuple) else []
