"""Reading a trace a user names: a normalized document, or a raw trace normalized on the way.

`diff` and `lint` take either kind, told apart by the schema line: `kvm-conformance/1`
(`record-trace`, `expected/`, `traces/qemu/`) or `kvm-conformance-raw/1` (`trace --format
yaml`), which is read back into events and normalized as if it had just been traced.
"""

from __future__ import annotations

import re
from pathlib import Path

from conformance.model.document import RAW_SCHEMA, SCHEMA, TraceDocument
from conformance.normalize.raw_import import import_raw_trace, is_raw_trace
from conformance.snapshot.store import SnapshotError, load_document

_SCHEMA_LINE = re.compile(r"^schema:", re.MULTILINE)


def read_trace(path: Path) -> TraceDocument:
    """The document in `path`, either kind; SnapshotError or RawTraceError naming the file."""
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise SnapshotError(path, None, "is a directory, not a trace file") from None
    except OSError as error:
        raise SnapshotError(path, None, f"cannot read: {error.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise SnapshotError(path, line, "not UTF-8 text: not a trace file") from None
    if is_raw_trace(text):
        return import_raw_trace(text, path)
    if _SCHEMA_LINE.search(text) is None:
        raise SnapshotError(
            path,
            None,
            f"not a trace document: no `schema:` line (a trace starts with `schema: {SCHEMA}`, "
            f"or `schema: {RAW_SCHEMA}` for `trace --format yaml`)",
        )
    return load_document(text, path)
