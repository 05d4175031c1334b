"""Reading a normalized call's fields: the one reader API every stage uses on trace entries.

A call is a plain mapping (docs/trace-format.md): these functions read it the way the format
defines it, and answer "absent" (an empty mapping, "", None) for anything that is not there or
not of the documented type, so that a reader never trips over a document another tool wrote.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from conformance.model.document import Entry, Value

_ADDRESS = re.compile(r"^(?P<mapping>.+)\+0x(?P<offset>[0-9a-f]+)$")


def request(entry: Entry) -> str:
    """The ioctl request's name; "" for other calls (and for a request known only by number)."""
    value = entry.get("req")
    return value if entry.get("call") == "ioctl" and isinstance(value, str) else ""


def section(entry: Entry, key: str) -> Mapping[str, Value]:
    """`in`, `out` or `exit` as a mapping ({} when absent)."""
    value = entry.get(key)
    return value if isinstance(value, dict) else {}


def integer(value: Value | None) -> int | None:
    return value if isinstance(value, int) else None


def entries(fields: Mapping[str, Value], key: str = "entries") -> list[Mapping[str, Value]]:
    """A struct's array of records (CPUID entries, MSRs, routes); [] when absent."""
    value = fields.get(key)
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, dict)]


def failed(entry: Entry) -> bool:
    return "errno" in entry


def answer(entry: Entry) -> int:
    """The ioctl's non-negative return value: normalization records a non-zero one as out.ret
    (a negative one, which no successful ioctl returns, reads as 0)."""
    value = integer(section(entry, "out").get("ret"))
    return value if value is not None and value > 0 else 0


def fd(entry: Entry) -> str:
    """The role of the fd the call was made on; "" for calls without one."""
    value = entry.get("fd")
    return value if isinstance(value, str) else ""


def address(value: Value | None) -> tuple[str, int] | None:
    """`ram0+0x1000` -> ("ram0", 0x1000); None for `unmapped`, a bare number or anything else."""
    if not isinstance(value, str):
        return None
    match = _ADDRESS.match(value)
    if match is None:
        return None
    return match.group("mapping"), int(match.group("offset"), 16)


def process_of(role: str) -> str:
    """`proc0.1/` for `proc0.1/vcpu0`; "" in a single-process trace."""
    process, slash, _ = role.rpartition("/")
    return process + slash
