"""A probe and its retries are one call: buffer-size negotiation collapsed.

A VMM that does not know how many CPUID entries or MSRs the host has asks with a guess; KVM
fails E2BIG and writes back the count it needs (or, for KVM_GET_SUPPORTED_HV_CPUID on kernels
before 5.11, fills the buffer to the brim), and the VMM asks again with more. How many tries
that takes is the host's answer (75 CPUID entries take two tries from 64, 59 take one), not
the VMM's decision, so the normalized trace has one logical call: the first try's input (the
VMM's guess), the last try's outcome, and `tries: N` as information that is not compared.
Which ioctls negotiate is the ABI table's `count_negotiated`.
"""

from __future__ import annotations

from conformance.abi.ioctls import IOCTLS
from conformance.model.document import Entry, TraceCall, Value

TRIES = "tries"  # the key of a collapsed call: how many calls it stands for (information)


def collapse_negotiation(calls: list[TraceCall]) -> list[TraceCall]:
    """One thread's calls with every probe-and-retry run made one call."""
    collapsed: list[TraceCall] = []
    for call in calls:
        previous = collapsed[-1] if collapsed else None
        if previous is not None and _retries(previous.entry, call.entry):
            # The run so far is one call already: its input is the first try's.
            tries = _tries(previous.entry) + 1
            collapsed[-1] = TraceCall(_merged(previous.entry, call.entry, tries), previous.line)
        else:
            collapsed.append(call)
    return collapsed


def _retries(probe: Entry, call: Entry) -> bool:
    """Whether `call` is `probe` asked again with a larger buffer after it came back short."""
    request = call.get("req")
    spec = IOCTLS.get(request) if isinstance(request, str) else None
    if spec is None or not spec.count_negotiated or spec.count_field is None:
        return False
    if probe.get("req") != request or probe.get("fd") != call.get("fd"):
        return False
    asked, asked_again = _count(probe, "in", spec.count_field), _count(call, "in", spec.count_field)
    if asked is None or asked_again is None or asked_again <= asked:
        return False
    if probe.get("errno") == "E2BIG":
        return True
    # A buffer filled to the brim may have been too small: QEMU's rule for HV_CPUID.
    return "errno" not in probe and _count(probe, "out", spec.count_field) == asked


def _count(entry: Entry, section: str, field: str) -> int | None:
    fields = entry.get(section)
    value = fields.get(field) if isinstance(fields, dict) else None
    return value if isinstance(value, int) else None


def _tries(entry: Entry) -> int:
    count = entry.get(TRIES, 1)
    return count if isinstance(count, int) else 1


def _merged(first: Entry, last: Entry, tries: int) -> Entry:
    merged: dict[str, Value] = {}
    for key, value in last.items():
        if key == TRIES:
            continue
        merged[key] = first[key] if key == "in" and "in" in first else value
    merged[TRIES] = tries
    return merged
