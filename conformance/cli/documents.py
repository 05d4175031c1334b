"""Reading a trace a user names: a normalized document, or a raw trace normalized on the way.

`diff` and `lint` take either kind, told apart by the schema line: `kvm-conformance/2`
(`record-trace`, `expected/`, `conformance/qemu/references/`) or `kvm-conformance-raw/1`
(`trace --format yaml`), which is read back into events and normalized as if it had just been
traced.
"""

from __future__ import annotations

import re
from pathlib import Path

from conformance.model.document import RAW_SCHEMA, SCHEMA, TraceDocument
from conformance.model.input_files import read_input_text
from conformance.normalize.raw_import import import_raw_trace, is_raw_trace
from conformance.snapshot.store import SnapshotError, load_document

_SCHEMA_LINE = re.compile(r"^schema:", re.MULTILINE)


def read_trace(path: Path) -> TraceDocument:
    """The document in `path`, either kind; SnapshotError or RawTraceError naming the file."""
    # A regular file of bounded size only (a FIFO or /dev/zero given as a trace is refused).
    text = read_input_text(path, lambda line, message: SnapshotError(path, line, message))
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
