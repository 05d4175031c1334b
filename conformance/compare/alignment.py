"""Ordered-subsequence alignment of a subject's calls inside a reference's, by dynamic programming.

Conformance asks whether every call a VMM makes appears in QEMU's sequence, in the same relative
order. Many reference calls share an identity (QEMU registers slot after slot with
KVM_SET_USER_MEMORY_REGION), so pairing each subject call with the first reference call of the
same identity would often pick the wrong one. The alignment instead maximizes, over all
order-preserving pairings, the number of paired calls first and their agreement second: a
subject call pairs with the reference call whose fields agree best, and a call left unpaired
is one the reference does not make at that point.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from conformance.compare.regression import call_identity
from conformance.model.document import TraceCall

# What pairing a call is worth: KVM calls most, mmaps (the memory layout) next, housekeeping
# (munmap, madvise, close...) least, so that a teardown munmap never wins a place in the
# alignment from a KVM call. Field disagreements subtract at most _MAX_PENALTY, so pairing a
# call always beats leaving it unpaired.
_KVM_CALL_WEIGHT = 10_000
_MMAP_WEIGHT = 5_000
_OTHER_WEIGHT = 1_000
_MAX_PENALTY = 999
_ARGUMENT_IS_IDENTITY = frozenset({"KVM_CHECK_EXTENSION"})


@dataclass(frozen=True, slots=True)
class Alignment:
    pairs: list[tuple[int, int]]  # (subject index, reference index), increasing in both
    unpaired: list[int]  # subject indices with no reference call


def conformance_identity(call: TraceCall) -> tuple[str, ...]:
    """What makes two calls the same call: the regression identity, and for the ioctls whose
    integer argument names what is asked (a capability) that argument too."""
    identity = call_identity(call)
    if call.entry.get("req") in _ARGUMENT_IS_IDENTITY:
        return (*identity, str(call.entry.get("arg", "")))
    return identity


def _weight(call: TraceCall) -> int:
    if call.entry.get("call") == "ioctl" or call.entry.get("call") == "open":
        return _KVM_CALL_WEIGHT
    return _MMAP_WEIGHT if call.entry.get("call") == "mmap" else _OTHER_WEIGHT


# Above this many cells (subject calls x reference calls) the table is not built whole: the
# subject is aligned in chunks of _CHUNK calls, each against what is left of the reference.
# A 100 MB trace has ~650k calls; QEMU's references a few hundred.
_EXACT_CELLS = 1_000_000
_CHUNK = 1_000


def align(
    subject: Sequence[TraceCall],
    reference: Sequence[TraceCall],
    disagreement: Callable[[TraceCall, TraceCall], int],
) -> Alignment:
    """The best order-preserving pairing; `disagreement` counts differing fields of a pair and
    must depend on the two calls' entries only (it is asked once per pair of entries).

    Exact while the table is at most _EXACT_CELLS. Past that, each chunk of the subject gets
    the best pairing within the reference calls after the previous chunk's last pair: exact
    for the chunk, and in practice for the whole (a long subject is a short start and a long
    repeating run, which the first chunks already pair with all the reference offers); the
    cost is then linear in the subject once the reference is used up, instead of a table of
    subject x reference cells."""
    remembered: dict[tuple[int, int], int] = {}

    def agreement(mine: TraceCall, theirs: TraceCall) -> int:
        key = (id(mine.entry), id(theirs.entry))  # a loaded document shares identical entries
        found = remembered.get(key)
        if found is None:
            found = remembered[key] = disagreement(mine, theirs)
        return found

    if len(subject) * len(reference) <= _EXACT_CELLS:
        return _align_exactly(subject, reference, agreement)
    pairs: list[tuple[int, int]] = []
    unpaired: list[int] = []
    next_reference = 0
    for start in range(0, len(subject), _CHUNK):
        chunk = subject[start : start + _CHUNK]
        rest = reference[next_reference:]
        if not rest or not _any_identity_shared(chunk, rest):
            unpaired.extend(range(start, start + len(chunk)))
            continue
        found = _align_exactly(chunk, rest, agreement)
        pairs.extend((start + s, next_reference + r) for s, r in found.pairs)
        unpaired.extend(start + s for s in found.unpaired)
        if found.pairs:
            next_reference += found.pairs[-1][1] + 1
    return Alignment(pairs, unpaired)


def _any_identity_shared(subject: Sequence[TraceCall], reference: Sequence[TraceCall]) -> bool:
    wanted = {conformance_identity(call) for call in reference}
    return any(conformance_identity(call) in wanted for call in subject)


def _align_exactly(
    subject: Sequence[TraceCall],
    reference: Sequence[TraceCall],
    disagreement: Callable[[TraceCall, TraceCall], int],
) -> Alignment:
    rows, columns = len(subject), len(reference)
    scores: dict[tuple[int, int], int] = {}

    def pair_score(i: int, j: int) -> int:
        if (i, j) not in scores:
            penalty = min(disagreement(subject[i], reference[j]), _MAX_PENALTY)
            scores[i, j] = _weight(subject[i]) - penalty
        return scores[i, j]

    identities = [conformance_identity(call) for call in reference]
    # best[i][j]: the best score pairing subject[i:] within reference[j:]
    best = [[0] * (columns + 1) for _ in range(rows + 1)]
    for i in range(rows - 1, -1, -1):
        identity = conformance_identity(subject[i])
        here, below = best[i], best[i + 1]
        for j in range(columns - 1, -1, -1):
            score = max(below[j], here[j + 1])  # leave subject[i] unpaired, or skip reference[j]
            if identities[j] == identity:
                score = max(score, pair_score(i, j) + below[j + 1])
            here[j] = score
    pairs: list[tuple[int, int]] = []
    unpaired: list[int] = []
    i = j = 0
    while i < rows:
        if j >= columns:
            unpaired.extend(range(i, rows))
            break
        if (
            identities[j] == conformance_identity(subject[i])
            and best[i][j] == pair_score(i, j) + best[i + 1][j + 1]
        ):
            pairs.append((i, j))
            i, j = i + 1, j + 1
            continue
        if best[i][j] == best[i][j + 1]:
            j += 1
        else:
            unpaired.append(i)
            i += 1
    return Alignment(pairs, unpaired)
