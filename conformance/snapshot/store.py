"""Snapshot files: trace documents read and written atomically, and a directory of them.

The YAML itself (deterministic dump, strict load, SnapshotError) is `snapshot.format`'s; this
module adds the files: reads that report unreadable or non-UTF-8 files as SnapshotErrors, writes
that readers never see half done, and `SnapshotStore`, which never overwrites a snapshot unless
asked to, as syrupy's --snapshot-update.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from conformance.model.document import TraceDocument
from conformance.model.errors import ConformanceError
from conformance.model.input_files import read_input_bytes, read_input_text
from conformance.snapshot.format import SnapshotError, dump_document, load_document

__all__ = [
    "PARTIAL_DIRECTORY",
    "SnapshotError",
    "SnapshotOverwriteError",
    "SnapshotStore",
    "StoreReport",
    "dump_document",
    "load_document",
    "read_document",
    "write_document",
    "write_text",
]


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
    """Any other text file the project writes (QEMU's log beside its trace), as atomically as
    a snapshot."""
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


class SnapshotStore:
    """A directory of `<scenario>.yaml` snapshots; never overwrites one unless `update` is set."""

    def __init__(self, directory: Path, *, update: bool = False) -> None:
        if directory.exists() and not directory.is_dir():
            raise SnapshotError(directory, None, "not a directory: snapshots are stored in one")
        self.directory = directory
        self.update = update
        self._report = StoreReport()
        self._used: set[str] = set()

    def path_for(self, scenario: str) -> Path:
        if not scenario or "/" in scenario or scenario.startswith("."):
            raise SnapshotError(self.directory / scenario, None, "not a valid scenario name")
        return self.directory / f"{scenario}.yaml"

    def load(self, scenario: str) -> TraceDocument | None:
        """The stored snapshot, or None when there is none yet."""
        path = self.path_for(scenario)
        self._used.add(scenario)
        return read_document(path) if path.exists() else None

    def save(self, scenario: str, document: TraceDocument) -> str:
        """Store a snapshot; returns "created", "updated" or "unchanged"."""
        path = self.path_for(scenario)
        self._used.add(scenario)
        new = dump_document(document).encode("utf-8")
        old = (
            read_input_bytes(path, lambda line, message: SnapshotError(path, line, message))
            if path.exists()
            else None
        )
        if old == new:
            outcome = "unchanged"
        elif old is None:
            outcome = "created"
        elif self.update:
            outcome = "updated"
        else:
            raise SnapshotOverwriteError(
                f"{path}: the snapshot differs; run with --snapshot-update to replace it"
            )
        if outcome != "unchanged":
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise SnapshotError(self.directory, None, f"cannot create: {error}") from None
            _write_atomically(path, new)
        getattr(self._report, outcome).append(scenario)
        return outcome

    def report(self) -> StoreReport:
        """Created/updated/unchanged in this session, and stored snapshots no one asked for."""
        stored = (
            sorted(path.stem for path in self.directory.glob("*.yaml"))
            if self.directory.is_dir()
            else []
        )
        return StoreReport(
            created=sorted(self._report.created),
            updated=sorted(self._report.updated),
            unchanged=sorted(self._report.unchanged),
            unused=[scenario for scenario in stored if scenario not in self._used],
        )
