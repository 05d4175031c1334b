"""Whether two traces ran the same guest: KVM_RUN exits are compared only then.

An exit is what the guest program did (an OUT to the serial port, an MMIO write, HLT); two VMMs
running different guests differ in every exit without either VMM doing anything differently.
So the conformance check compares KVM_RUN calls only when both traces record the same guest
memory: the tracer hashes each VM's non-zero guest pages at its first KVM_RUN
(tracer/guest_memory.py) into `source.guest_memory: {VM: {pages: N, sha256: ...}}`. Otherwise
it says why not and summarizes each side's exits in one line, instead of reporting every exit
of another program as a deviation.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from conformance.model.calls import section
from conformance.model.document import GUEST_MEMORY, TraceDocument

_SHOWN_PORTS = 4  # IO ports named per exit summary, the most frequent first


@dataclass(frozen=True, slots=True)
class ExitComparison:
    compared: bool
    reason: str  # why the exits were (not) compared; "" when neither side runs a guest
    subject: str = ""  # each side's exits in one line, when they were not compared
    reference: str = ""


def compare_exits(subject: TraceDocument, reference: TraceDocument) -> ExitComparison:
    if not _runs(subject):
        return ExitComparison(compared=True, reason="")
    summaries = {"subject": exit_summary(subject), "reference": exit_summary(reference)}
    if not _runs(reference):
        return ExitComparison(False, "the reference runs no guest", **summaries)
    ours, theirs = guest_digests(subject), guest_digests(reference)
    if not ours or not theirs:
        return ExitComparison(False, _unrecorded(ours, theirs), **summaries)
    if ours != theirs:
        differ = f"the guests differ ({_digests_text(ours)} against {_digests_text(theirs)})"
        return ExitComparison(False, differ, **summaries)
    return ExitComparison(True, f"both ran the same guest memory ({_digests_text(ours)})")


def guest_digests(document: TraceDocument) -> list[tuple[str, int]]:
    """(sha256, non-zero pages) of each VM's guest memory at its first KVM_RUN, sorted."""
    recorded = document.source.get(GUEST_MEMORY)
    if not isinstance(recorded, dict):
        return []
    found = []
    for memory in recorded.values():
        if isinstance(memory, dict):
            digest, pages = memory.get("sha256"), memory.get("pages")
            if isinstance(digest, str) and isinstance(pages, int):
                found.append((digest, pages))
    return sorted(found)


def exit_summary(document: TraceDocument) -> str:
    """ "80 KVM_RUN calls: KVM_EXIT_IO x79 (out 0x3f8 x61, in 0x3fd x16, ...), KVM_EXIT_HLT x1"."""
    reasons: Counter[str] = Counter()
    ports: Counter[str] = Counter()
    calls = 0
    for located in document.calls():
        if located.call.name != "KVM_RUN":
            continue
        count = located.call.repeat
        calls += count
        exit_fields = section(located.entry, "exit")
        reason = str(exit_fields.get("reason", located.entry.get("errno", "no exit")))
        reasons[reason] += count
        port = exit_fields.get("port")
        if isinstance(port, int):
            ports[f"{exit_fields.get('direction', '?')} {port:#x}"] += count
    if not calls:
        return "no KVM_RUN"
    parts = []
    for reason, count in reasons.most_common():
        text = f"{reason} x{count}"
        if reason == "KVM_EXIT_IO" and ports:
            shown = [f"{port} x{n}" for port, n in ports.most_common(_SHOWN_PORTS)]
            more = ", ..." if len(ports) > _SHOWN_PORTS else ""
            text += f" ({', '.join(shown)}{more})"
        parts.append(text)
    return f"{calls} KVM_RUN calls: {', '.join(parts)}"


def _unrecorded(ours: list[tuple[str, int]], theirs: list[tuple[str, int]]) -> str:
    if not ours and not theirs:
        return "neither side's guest memory is recorded (traced before it was)"
    side = "the subject's" if not ours else "the reference's"
    return f"{side} guest memory is not recorded (traced before it was)"


def _runs(document: TraceDocument) -> bool:
    return any(located.call.name == "KVM_RUN" for located in document.calls())


def _digests_text(digests: list[tuple[str, int]]) -> str:
    return ", ".join(f"memory sha256 {digest[:12]} ({pages} pages)" for digest, pages in digests)
