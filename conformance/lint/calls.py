"""What the rules read off a trace beyond one call's fields (those are model/calls.py's).

Cross-thread order is not recorded in a trace document (docs/trace-format.md), so a rule judges
an order only between calls of one thread; facts that do not depend on order (what the VMM ever
asked KVM_CHECK_EXTENSION, how long a mapping is) are gathered over the whole process.
"""

from __future__ import annotations

from collections.abc import Iterator

from conformance.model.calls import address, answer, failed, integer, process_of, request
from conformance.model.document import Entry, Located, TraceDocument

PAGE_SIZE = 4096
# Errors that mean "ask again", not "refused": a signal (or immediate_exit) and a busy kernel.
RETRY_ERRNOS = frozenset({"EINTR", "EAGAIN"})


def calls_in_order(document: TraceDocument) -> Iterator[tuple[str, list[Located]]]:
    """Each thread's calls, thread by thread: the unit within which a rule judges an order."""
    for role in document.sorted_roles():
        yield role, list(document.calls(role))


def refused(entry: Entry) -> bool:
    """Failed with an error that is an answer, not a request to retry."""
    errno = entry.get("errno")
    return isinstance(errno, str | int) and errno not in RETRY_ERRNOS


def is_vcpu_fd(role: str) -> bool:
    return role.startswith("vcpu")


def capability_answers(document: TraceDocument) -> dict[str, dict[str, int]]:
    """Per process, every capability the VMM asked about and the largest answer it got.

    A capability KVM does not have is answered 0, which normalization leaves out (no out.ret).
    """
    answers: dict[str, dict[str, int]] = {}
    for located in document.calls():
        process = answers.setdefault(process_of(located.thread), {})
        entry = located.entry
        if request(entry) != "KVM_CHECK_EXTENSION" or failed(entry):
            continue
        capability = entry.get("arg")
        if isinstance(capability, str):
            process[capability] = max(process.get(capability, 0), answer(entry))
    return answers


def mapping_lengths(document: TraceDocument) -> dict[str, dict[str, int]]:
    """Per process, each named mapping's length: from its mmap, or its last mremap."""
    lengths: dict[str, dict[str, int]] = {}
    for located in document.calls():
        process = lengths.setdefault(process_of(located.thread), {})
        entry = located.entry
        kind = entry.get("call")
        if kind == "mmap" and isinstance(entry.get("ret"), str):
            size = integer(entry.get("len"))
            if size is not None:
                process[str(entry["ret"])] = size
        elif kind == "mremap":
            moved = address(entry.get("addr"))
            size = integer(entry.get("new_len"))
            if moved is not None and size is not None:
                process[moved[0]] = moved[1] + size
    return lengths
