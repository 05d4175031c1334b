"""Reading a file a user gave us: a regular file of bounded size, as UTF-8 text.

Every input the tool reads (trace documents, allowances, strace logs, pyproject.toml) goes
through here, so that none of them can hang on a FIFO, read /dev/zero until memory runs out or
end in a UnicodeDecodeError. The caller says how to word the error: each stage raises its own
ConformanceError subclass, naming the file and, for a bad byte, its line.

This is the one place below the stages that opens a file; it reads, it keeps nothing.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from conformance.model.errors import ConformanceError

# Far above any real trace (100 MB, a long guest run, is read in well under a GiB of memory)
# and below what would exhaust memory before the first line is looked at.
MAX_INPUT_BYTES = 512 * 1024 * 1024

ErrorFactory = Callable[[int | None, str], ConformanceError]


def read_input_text(path: Path, error: ErrorFactory, *, limit: int = MAX_INPUT_BYTES) -> str:
    """The file's text; `error(line, message)` is raised for anything but a regular UTF-8 file
    of at most `limit` bytes."""
    data = read_input_bytes(path, error, limit=limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as problem:
        line = data.count(b"\n", 0, problem.start) + 1
        raise error(line, f"not UTF-8 text (byte 0x{data[problem.start]:02x})") from None


def read_input_bytes(path: Path, error: ErrorFactory, *, limit: int = MAX_INPUT_BYTES) -> bytes:
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused just below.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as problem:
        raise error(None, f"cannot read: {problem.strerror}") from None
    try:
        status = os.fstat(descriptor)
        if _is_null_device(status):
            return b""  # /dev/null: the usual way to say "nothing", and it ends at once
        if not stat.S_ISREG(status.st_mode):
            raise error(None, f"not a regular file (it is {_file_kind(status.st_mode)})")
        if status.st_size > limit:
            raise error(
                None, f"too large: {status.st_size} bytes (inputs of up to {limit} are read)"
            )
        chunks: list[bytes] = []
        total = 0
        while chunk := os.read(descriptor, 1 << 24):
            total += len(chunk)
            if total > limit:  # grew while being read
                raise error(None, f"too large: more than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as problem:
        raise error(None, f"cannot read: {problem.strerror}") from None
    finally:
        os.close(descriptor)


def _is_null_device(status: os.stat_result) -> bool:
    try:
        null = os.stat(os.devnull)
    except OSError:
        return False
    return stat.S_ISCHR(status.st_mode) and status.st_rdev == null.st_rdev


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "not a plain file")
