"""Snapshot files: trace documents read and written atomically, and a directory of them.

The YAML itself (deterministic dump, strict load, SnapshotError) is `snapshot.format`'s; this
module adds the files: reads that report unreadable or non-UTF-8 files as SnapshotErrors, writes
that readers never see half done, and `SnapshotStore`, a directory of NAME.yaml snapshots that
never overwrites one unless asked to (as syrupy's --snapshot-update), with pending snapshots
beside them (NAME.yaml.new, as insta's .snap.new) for `kvm-conformance review`.

A store writes nothing while a run goes on: what a run would write is staged, and `commit()`
writes it all once the run has finished, with SIGINT and SIGTERM held for the few milliseconds
that takes. A run interrupted before its end (Ctrl-C, SIGTERM) therefore changes no file, and
one interrupted while committing changes all it meant to.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from conformance.model.document import TraceDocument
from conformance.model.errors import ConformanceError
from conformance.model.input_files import read_input_bytes, read_input_text
from conformance.snapshot.format import SnapshotError, dump_document, load_document

__all__ = [
    "PARTIAL_DIRECTORY",
    "PENDING_SUFFIX",
    "SnapshotError",
    "SnapshotOverwriteError",
    "SnapshotStore",
    "StoreReport",
    "WriteOutcome",
    "dump_document",
    "load_document",
    "read_document",
    "running_on_ci",
    "write_document",
    "write_text",
]


PENDING_SUFFIX = ".new"  # NAME.yaml.new: a snapshot waiting for review beside NAME.yaml
WriteOutcome = Literal["created", "updated", "unchanged"]
_HELD_SIGNALS = {signal.SIGINT, signal.SIGTERM}
_NOT_CI = ("", "0", "false", "no")
_SOURCE_TOOL = re.compile(r"^  tool: (.*)$", re.MULTILINE)


def running_on_ci(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether `CI` is set, as CI services set it: nothing is written there unless forced, so
    that a CI run can never bless its own output (insta's rule)."""
    return environ.get("CI", "").strip().lower() not in _NOT_CI


class SnapshotOverwriteError(ConformanceError):
    """A snapshot differs from what is on disk and updating was not asked for."""


# -- files ----------------------------------------------------------------------------------


def read_document(path: Path) -> TraceDocument:
    """A trace file: a regular file of UTF-8 YAML in the trace format, else a SnapshotError."""
    text = read_input_text(path, lambda line, message: SnapshotError(path, line, message))
    return load_document(text, path)


def write_document(path: Path, document: TraceDocument) -> None:
    _write_atomically(path, dump_document(document).encode("utf-8"))


# Files being written live in a hidden directory beside their target until they are renamed
# over it, and the directory goes when the write is done. It holds a .gitignore of "*" (as
# pytest's cache does), so `git status` never lists what a killed run left in it, nor do
# NAME.yaml globs; and each write removes the partial files of writers that are gone (a writer
# holds an flock on its file until the rename: one not locked and older than a few seconds was
# left by a killed run), then the directory once it is empty.
PARTIAL_DIRECTORY = ".kvm-conformance-partial"
_LEFT_BEHIND_AFTER = 5.0  # seconds: far longer than a writer takes from mkstemp to flock
_IGNORE_ALL = "# files kvm-conformance is writing (or a killed run left)\n*\n"


def write_text(path: Path, text: str) -> None:
    """Any other text file the project writes (a configuration, QEMU's log beside its trace),
    as atomically as a snapshot."""
    _write_atomically(path, text.encode("utf-8"))


def _write_atomically(path: Path, data: bytes) -> None:
    """Readers see the old file or the new one, never half of one, even across a crash."""
    try:
        try:
            partial = _partial_directory(path.parent)
            descriptor, temporary = tempfile.mkstemp(dir=partial, prefix=f"{path.name}.")
        except FileNotFoundError:  # another writer removed the directory just then
            partial = _partial_directory(path.parent)
            descriptor, temporary = tempfile.mkstemp(dir=partial, prefix=f"{path.name}.")
    except OSError as error:
        raise SnapshotError(path, None, f"cannot write: {error.strerror}") from None
    replaced = False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)  # held until closed: this writer is alive
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fchmod(stream.fileno(), 0o644)  # mkstemp's 0600 would hide a committed snapshot
            os.fsync(stream.fileno())
            os.replace(temporary, path)
            replaced = True
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)  # make the rename itself durable
        finally:
            os.close(directory)
    except OSError as error:
        raise SnapshotError(path, None, f"cannot write: {error.strerror}") from None
    finally:
        if not replaced:
            Path(temporary).unlink(missing_ok=True)
        _remove_if_empty(partial)


def _partial_directory(parent: Path) -> Path:
    partial = parent / PARTIAL_DIRECTORY
    partial.mkdir(exist_ok=True)
    ignore = partial / ".gitignore"
    if not ignore.exists():
        ignore.write_text(_IGNORE_ALL)
    _remove_left_behind(partial)
    return partial


def _remove_if_empty(partial: Path) -> None:
    """The directory and its .gitignore, when no partial file is in it (another writer's new
    file makes the rmdir fail, and that writer puts the .gitignore back)."""
    try:
        if [entry.name for entry in os.scandir(partial)] == [".gitignore"]:
            (partial / ".gitignore").unlink()
            partial.rmdir()
    except OSError:
        pass  # another writer's file is there, or the directory is already gone


def _remove_left_behind(partial: Path) -> None:
    now = time.time()
    for entry in os.scandir(partial):
        if entry.name == ".gitignore":
            continue
        try:
            descriptor = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue  # renamed or removed meanwhile
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if now - os.fstat(descriptor).st_mtime > _LEFT_BEHIND_AFTER:
                os.unlink(entry.path)
        except OSError:
            pass  # locked: its writer is still at work (or it is already gone)
        finally:
            os.close(descriptor)


# -- the store ------------------------------------------------------------------------------


@dataclass(slots=True)
class StoreReport:
    """What a session did to the snapshot directory, as syrupy reports it at the end."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # NAME.yaml.new written for review


class SnapshotStore:
    """A directory of `<name>.yaml` snapshots; never overwrites one unless `update` is set.

    `stage` and `stage_pending` decide what a run writes; `commit` writes it.
    """

    def __init__(self, directory: Path, *, update: bool = False) -> None:
        if directory.exists() and not directory.is_dir():
            raise SnapshotError(directory, None, "not a directory: snapshots are stored in one")
        self.directory = directory
        self.update = update
        self._report = StoreReport()
        self._used: set[str] = set()
        self._staged: dict[Path, bytes | None] = {}  # None: remove the file

    def path_for(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise SnapshotError(self.directory / name, None, "not a valid snapshot name")
        return self.directory / f"{name}.yaml"

    def pending_path_for(self, name: str) -> Path:
        path = self.path_for(name)
        return path.with_name(path.name + PENDING_SUFFIX)

    def load(self, name: str) -> TraceDocument | None:
        """The stored snapshot, or None when there is none yet."""
        path = self.path_for(name)
        self._used.add(name)
        return read_document(path) if path.exists() else None

    def stage(self, name: str, document: TraceDocument) -> WriteOutcome:
        """Stage `document` as snapshot `name`: "created", "updated" or "unchanged" once
        committed. SnapshotOverwriteError when it differs and updating was not asked for."""
        return self.stage_text(name, dump_document(document))

    def stage_text(self, name: str, text: str) -> WriteOutcome:
        path = self.path_for(name)
        self._used.add(name)
        new = text.encode("utf-8")
        old = _read_if_present(path)
        outcome: WriteOutcome
        if old == new:
            outcome = "unchanged"
        elif old is None:
            outcome = "created"
        elif self.update:
            outcome = "updated"
        else:
            raise SnapshotOverwriteError(
                f"{path}: the snapshot differs, and updating it was not asked for"
            )
        if outcome != "unchanged":
            self._staged[path] = new
        self._staged.setdefault(self.pending_path_for(name), None)  # superseded by this
        getattr(self._report, outcome).append(name)
        return outcome

    def stage_pending(self, name: str, text: str) -> Path:
        """Stage NAME.yaml.new: what the run saw where the snapshot is missing or differs."""
        path = self.pending_path_for(name)
        self._staged[path] = text.encode("utf-8")
        self._report.pending.append(name)
        return path

    def stage_pending_removal(self, name: str) -> None:
        """A pending snapshot the run has made stale (the snapshot now matches)."""
        self._staged.setdefault(self.pending_path_for(name), None)

    def stage_removal(self, name: str) -> None:
        self._staged[self.path_for(name)] = None

    def commit(self) -> None:
        """Write (or remove) every staged file, each atomically, with SIGINT and SIGTERM held
        until the last is done: all of them, or (after an error) those before it. A signal
        already waiting when the commit starts cancels it: nothing is written, and the signal
        then arrives (a KeyboardInterrupt for SIGINT)."""
        staged, self._staged = self._staged, {}
        changes = {
            path: data
            for path, data in staged.items()
            if data is not None or path.exists() or path.is_symlink()
        }
        if not changes:
            return
        with _signals_held():
            if signal.sigpending() & _HELD_SIGNALS:
                return
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise SnapshotError(self.directory, None, f"cannot create: {error}") from None
            for path, data in sorted(changes.items()):
                if data is None:
                    _remove(path)
                else:
                    _write_atomically(path, data)

    def discard_staged(self) -> None:
        """Forget what was staged: the run did not finish."""
        self._staged.clear()

    def pending(self) -> list[str]:
        """Names with a NAME.yaml.new on disk, sorted."""
        suffix = ".yaml" + PENDING_SUFFIX
        if not self.directory.is_dir():
            return []
        return sorted(
            path.name.removesuffix(suffix)
            for path in self.directory.glob(f"*{suffix}")
            if not path.name.startswith(".")
        )

    def accept_pending(self, name: str) -> None:
        """NAME.yaml.new becomes NAME.yaml (one rename: never half of either)."""
        pending = self.pending_path_for(name)
        read_document(pending)  # a file that is not a snapshot is never accepted
        with _signals_held():
            try:
                os.replace(pending, self.path_for(name))
            except OSError as error:
                raise SnapshotError(pending, None, f"cannot accept: {error.strerror}") from None

    def reject_pending(self, name: str) -> None:
        _remove(self.pending_path_for(name))

    def names(self) -> list[str]:
        """The snapshots stored in the directory, sorted."""
        if not self.directory.is_dir():
            return []
        return sorted(
            path.stem for path in self.directory.glob("*.yaml") if not path.name.startswith(".")
        )

    def written_by(self, tools: frozenset[str]) -> list[str]:
        """The stored snapshots whose `source: tool:` is one of `tools`: those a face of ours
        (check's scenarios, the pytest plugin's traces) is answerable for when it looks for
        unused ones in a directory both share. Read from the source block only (the dump puts it
        first); a file that cannot be read counts, so that it is seen."""
        chosen = []
        for name in self.names():
            try:
                head = self.path_for(name).read_text(encoding="utf-8", errors="replace")
            except OSError:
                chosen.append(name)
                continue
            found = _SOURCE_TOOL.search(head.split("\nthreads:", 1)[0])
            if found is None or found.group(1).strip().strip("'\"") in tools:
                chosen.append(name)
        return chosen

    def report(self) -> StoreReport:
        """Created/updated/unchanged in this session, and stored snapshots no one asked for."""
        stored = self.names()
        return StoreReport(
            created=sorted(self._report.created),
            updated=sorted(self._report.updated),
            unchanged=sorted(self._report.unchanged),
            unused=[name for name in stored if name not in self._used],
            pending=sorted(self._report.pending),
        )


def _read_if_present(path: Path) -> bytes | None:
    if not path.exists():
        return None
    return read_input_bytes(path, lambda line, message: SnapshotError(path, line, message))


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as error:
        raise SnapshotError(path, None, f"cannot remove: {error.strerror}") from None


@contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block is done (then arrive, as KeyboardInterrupt or
    as the termination they are): a set of snapshot files is written whole."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
