"""Comparing two trace documents, thread by thread: the regression half.

Regression asks "does this trace equal the stored one?": per thread role the two call sequences
are aligned (difflib on each call's identity: syscall, fd role, request), so an inserted or a
lost call is reported as exactly that instead of shifting every later call into a difference;
aligned calls are then compared field by field. What the VMM chose (`in:`, `arg`, fd roles,
`exit`, `repeat`...) is compared; what the kernel answered (`out:`) is not, unless a scenario
opts a path in (`CompareOptions.compare_outputs`); any path can be left out (`ignore`).

The conformance half (an ordered-subsequence match against QEMU's trace, with named rules) is
built on the same pieces: `call_identity` to pair calls, `field_differences` to compare a pair,
and `Difference` to report.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

from conformance.abi.ioctls import IOCTLS
from conformance.compare.decisions import LeftOut, decide
from conformance.compare.host_differences import HostContext
from conformance.compare.keyed_sets import keyed_comparer
from conformance.model.document import TraceCall, TraceDocument, Value, thread_role_order
from conformance.model.errors import ConformanceError
from conformance.model.negotiation import TRIES


class _Absent:
    """The value of a field one side does not have."""

    def __repr__(self) -> str:
        return "(absent)"


ABSENT = _Absent()
Compared: TypeAlias = "Value | _Absent"
EXIT_STATUS = "exit_status"  # the key of `source:` that records how the traced program ended


class DifferenceKind(enum.Enum):
    FIELD = "field"  # an aligned call whose field differs
    MISSING_CALL = "missing call"  # expected, not made
    EXTRA_CALL = "extra call"  # made, not expected
    MISSING_THREAD = "missing thread"
    EXTRA_THREAD = "extra thread"
    EXIT_STATUS = "exit status"  # the VMM ended otherwise (source.exit_status)


@dataclass(frozen=True, slots=True)
class Difference:
    kind: DifferenceKind
    thread: str
    call_name: str  # "KVM_SET_USER_MEMORY_REGION", "mmap"; "" for a whole thread
    # Position in each thread's list. For a missing call, actual_index is where it would have
    # come in the actual trace; for an extra call, expected_index likewise.
    expected_index: int | None = None
    actual_index: int | None = None
    path: str = ""  # the field: "in.guest_phys_addr", "exit.port", "out.entries[3].eax"
    expected: Compared = ABSENT
    actual: Compared = ABSENT
    expected_line: int | None = None  # line of the call in the expected file, when loaded
    # A call made on one host only, right after a probe the hosts answered differently: the
    # probe and both answers. Shown, not failed on.
    explained_by: str = ""


class CompareOptionsError(ConformanceError):
    """A scenario's comparison options that are not a mapping of path lists."""


@dataclass(frozen=True, slots=True)
class CompareOptions:
    """Per-scenario choices: kernel answers to compare after all, fields to leave out.

    Paths are dotted field paths as differences show them; a path covers everything below it
    (`out` opts every answer in, `in.flags` just one field). `REQUEST:path` limits a path to
    the calls of one request (`KVM_SET_CPUID2:in.entries`).
    """

    compare_outputs: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    # The two traces' hosts, when they are known: what the hosts explain is not a difference.
    hosts: HostContext | None = None

    @classmethod
    def from_mapping(cls, data: object, where: str) -> CompareOptions:
        """From a scenario's YAML: {compare_outputs: [paths], ignore: [paths]}."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise CompareOptionsError(f"{where}: comparison options must be a mapping")
        unknown = sorted(str(key) for key in data if key not in ("compare_outputs", "ignore"))
        if unknown:
            raise CompareOptionsError(f"{where}: unknown comparison option(s) {unknown}")
        lists: dict[str, tuple[str, ...]] = {}
        for key in ("compare_outputs", "ignore"):
            paths = data.get(key, [])
            if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
                raise CompareOptionsError(f"{where}: '{key}' must be a list of field paths")
            lists[key] = tuple(paths)
        return cls(compare_outputs=lists["compare_outputs"], ignore=lists["ignore"])

    def compares(self, path: str, request: str = "") -> bool:
        """Whether field `path` of a call of `request` is compared."""
        if path == TRIES or path == _negotiated_count(request):
            # How many tries a negotiation took, and the buffer size it started from: the
            # kernel answers the same entries whatever the first guess (model/negotiation.py).
            return False
        if _covered(path, _for_request(self.ignore, request)):
            return False
        if _covered(path, ("out",)):
            opted_in = _for_request(self.compare_outputs, request)
            return _covered(path, opted_in) or any(_covered(option, (path,)) for option in opted_in)
        return True


@functools.cache
def _negotiated_count(request: str) -> str | None:
    spec = IOCTLS.get(request)
    if spec is None or not spec.count_negotiated or spec.count_field is None:
        return None
    return f"in.{spec.count_field}"


def _for_request(paths: Sequence[str], request: str) -> list[str]:
    """The paths that apply to a call of `request`, without their `REQUEST:` qualifier."""
    chosen = []
    for path in paths:
        qualifier, separator, rest = path.rpartition(":")
        if not separator:
            chosen.append(path)
        elif qualifier == request:
            chosen.append(rest)
    return chosen


def _covered(path: str, prefixes: Sequence[str]) -> bool:
    return any(
        path == prefix or path.startswith((prefix + ".", prefix + "[")) for prefix in prefixes
    )


@dataclass(slots=True)
class Comparison:
    scenario: str
    expected: TraceDocument
    actual: TraceDocument
    differences: list[Difference] = field(default_factory=list)
    options: CompareOptions = field(default_factory=CompareOptions)  # what was compared
    # Differences not reported because the field is not a VMM decision (compare/decisions.py).
    left_out: list[LeftOut] = field(default_factory=list)

    @property
    def failures(self) -> list[Difference]:
        """The differences the hosts do not explain."""
        return [difference for difference in self.differences if not difference.explained_by]

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def hosts(self) -> HostContext | None:
        return self.options.hosts


def call_identity(call: TraceCall) -> tuple[str, str, str]:
    """What makes two calls "the same call" for alignment: syscall, fd role, request."""
    entry = call.entry
    return (str(entry.get("call")), str(entry.get("fd", "")), str(entry.get("req", "")))


def compare_documents(
    expected: TraceDocument,
    actual: TraceDocument,
    *,
    scenario: str,
    options: CompareOptions | None = None,
) -> Comparison:
    """Regression: how the VMM ended, then every thread's calls, aligned, field by field,
    with what the two traces' hosts explain (compare/host_differences.py) left out."""
    chosen = options or CompareOptions()
    if chosen.hosts is None:
        chosen = dataclasses.replace(chosen, hosts=HostContext.between(expected, actual))
    comparison = Comparison(scenario, expected, actual, options=chosen)
    # The exit status is the one result in `source:`; documents that both record it compare it.
    expected_status = expected.source.get(EXIT_STATUS)
    actual_status = actual.source.get(EXIT_STATUS)
    if (
        isinstance(expected_status, int)
        and isinstance(actual_status, int)
        and expected_status != actual_status
    ):
        comparison.differences.append(
            Difference(
                DifferenceKind.EXIT_STATUS,
                "",
                "",
                path=EXIT_STATUS,
                expected=expected_status,
                actual=actual_status,
            )
        )
    roles = sorted(set(expected.threads) | set(actual.threads), key=thread_role_order)
    for role in roles:
        if role not in actual.threads:
            comparison.differences.append(
                Difference(
                    DifferenceKind.MISSING_THREAD, role, "", expected=len(expected.threads[role])
                )
            )
        elif role not in expected.threads:
            comparison.differences.append(
                Difference(DifferenceKind.EXTRA_THREAD, role, "", actual=len(actual.threads[role]))
            )
        else:
            comparison.differences.extend(
                _thread_differences(
                    role,
                    expected.threads[role],
                    actual.threads[role],
                    chosen,
                    comparison.left_out,
                )
            )
    return comparison


def _thread_differences(
    role: str,
    expected: list[TraceCall],
    actual: list[TraceCall],
    options: CompareOptions,
    left_out: list[LeftOut],
) -> Iterator[Difference]:
    for tag, e_start, e_end, a_start, a_end in aligned_calls(expected, actual, options):
        if tag == "equal":
            for offset in range(e_end - e_start):
                e_call, a_call = expected[e_start + offset], actual[a_start + offset]
                for path, e_value, a_value in field_differences(e_call, a_call, options, left_out):
                    yield Difference(
                        DifferenceKind.FIELD,
                        role,
                        e_call.name,
                        e_start + offset,
                        a_start + offset,
                        path,
                        e_value,
                        a_value,
                        e_call.line,
                    )
            continue
        probe = _differing_probe(options.hosts, expected, e_start, actual, a_start)
        for index in range(e_start, e_end):
            call = expected[index]
            yield Difference(
                DifferenceKind.MISSING_CALL,
                role,
                call.name,
                index,
                a_start,
                expected=call.entry,
                expected_line=call.line,
                explained_by=probe,
            )
        for index in range(a_start, a_end):
            call = actual[index]
            yield Difference(
                DifferenceKind.EXTRA_CALL,
                role,
                call.name,
                e_end,
                index,
                actual=call.entry,
                explained_by=probe,
            )


def _differing_probe(
    hosts: HostContext | None,
    expected: Sequence[TraceCall],
    e_start: int,
    actual: Sequence[TraceCall],
    a_start: int,
) -> str:
    """The probe right before calls made on one host only, when the hosts answered it
    differently ("" when there is none): the calls that follow it are the VMM's other path."""
    if hosts is None or e_start == 0 or a_start == 0:
        return ""
    before = expected[e_start - 1]
    if call_identity(before) != call_identity(actual[a_start - 1]):
        return ""
    return hosts.probe_differs(before) or ""


Opcode: TypeAlias = tuple[str, int, int, int, int]


def aligned_calls(
    expected: Sequence[TraceCall], actual: Sequence[TraceCall], options: CompareOptions
) -> list[Opcode]:
    """The two threads aligned, as difflib opcodes: "equal" runs pair calls of one identity
    (compared field by field), "delete"/"insert" runs are missing and extra calls.

    Two passes, as a word diff refines a line diff: calls are first matched whole (every
    compared field), so that an inserted CHECK_EXTENSION among three, or two swapped calls,
    shows as that one call instead of shifting its neighbours' fields; the runs left over
    are then paired by identity (syscall, fd role, request), where a changed field is a field
    difference of a paired call.
    """
    whole = _matcher(
        [_fingerprint(c, options) for c in expected], [_fingerprint(c, options) for c in actual]
    )
    opcodes: list[Opcode] = []
    for tag, e_start, e_end, a_start, a_end in whole.get_opcodes():
        if tag == "equal":
            opcodes.append((tag, e_start, e_end, a_start, a_end))
            continue
        by_identity = _matcher(
            [call_identity(call) for call in expected[e_start:e_end]],
            [call_identity(call) for call in actual[a_start:a_end]],
        )
        for inner, e1, e2, a1, a2 in by_identity.get_opcodes():
            if inner == "replace":  # as difflib means it: deleted, then inserted
                opcodes.append(("delete", e_start + e1, e_start + e2, a_start + a1, a_start + a1))
                opcodes.append(("insert", e_start + e2, e_start + e2, a_start + a1, a_start + a2))
            else:
                opcodes.append((inner, e_start + e1, e_start + e2, a_start + a1, a_start + a2))
    return opcodes


def _matcher(a: Sequence[Hashable], b: Sequence[Hashable]) -> difflib.SequenceMatcher[Hashable]:
    # autojunk off: KVM_RUN makes up most of a vCPU thread and must still align.
    return difflib.SequenceMatcher(a=a, b=b, autojunk=False)


def _fingerprint(call: TraceCall, options: CompareOptions) -> str:
    """The call's compared fields as text: equal exactly when no field would differ."""
    return repr(_compared_part(call.name, "", call.entry, options))


def _compared_part(request: str, path: str, value: Value, options: CompareOptions) -> object:
    if isinstance(value, dict):
        return tuple(
            (key, _compared_part(request, f"{path}.{key}" if path else key, item, options))
            for key, item in sorted(value.items())
            if options.compares(f"{path}.{key}" if path else key, request)
        )
    if isinstance(value, list):
        if keyed_comparer(request, path) is not None:  # a set: its order does not count
            return tuple(
                sorted(repr(_compared_part(request, path, item, options)) for item in value)
            )
        return tuple(_compared_part(request, path, item, options) for item in value)
    return (type(value) is str, int(value) if isinstance(value, int) else value)


def field_differences(
    expected: TraceCall,
    actual: TraceCall,
    options: CompareOptions,
    left_out: list[LeftOut] | None = None,
) -> Iterator[tuple[str, Compared, Compared]]:
    """(path, expected, actual) for every compared field where two calls differ; fields that
    are not a VMM decision (compare/decisions.py) are not compared, and the differences they
    would have made go to `left_out` when given."""
    if options.hosts is not None:
        expected, actual = options.hosts.reconcile(expected, actual)
    decided = decide(expected, actual)
    if left_out is not None:
        left_out.extend(item for item in decided.left_out if options.compares(item.path, item.call))
    yield from _value_differences(
        expected.name, "", decided.expected.entry, decided.actual.entry, options
    )


def _value_differences(
    request: str, path: str, expected: Compared, actual: Compared, options: CompareOptions
) -> Iterator[tuple[str, Compared, Compared]]:
    if path and not options.compares(path, request):
        return
    if isinstance(expected, dict) and isinstance(actual, dict):
        keys = list(expected) + [key for key in actual if key not in expected]
        for key in keys:
            yield from _value_differences(
                request,
                f"{path}.{key}" if path else key,
                expected.get(key, ABSENT),
                actual.get(key, ABSENT),
                options,
            )
    elif (
        isinstance(expected, list)
        and isinstance(actual, list)
        and (keyed := keyed_comparer(request, path)) is not None
    ):
        # CPUID entries and MSR lists are sets to the kernel: compared by key, not position.
        for found in keyed(expected, actual):
            entry_path = f"{path}[{found.key}]"
            field_path = f"{entry_path}.{found.field}" if found.field else entry_path
            if options.compares(field_path, request):
                yield (field_path, _present(found.expected), _present(found.actual))
    elif isinstance(expected, list) and isinstance(actual, list) and _all_structured(expected):
        # Lists of structs (CPUID entries, MSRs) item by item; lists of flags as a whole.
        for index in range(max(len(expected), len(actual))):
            yield from _value_differences(
                request,
                f"{path}[{index}]",
                expected[index] if index < len(expected) else ABSENT,
                actual[index] if index < len(actual) else ABSENT,
                options,
            )
    elif not _same(expected, actual):
        yield (path, expected, actual)


def _present(value: Value | None) -> Compared:
    return ABSENT if value is None else value


def _all_structured(values: list[Value]) -> bool:
    return bool(values) and all(isinstance(value, dict | list) for value in values)


def _same(expected: Compared, actual: Compared) -> bool:
    # Hex(16) and 16 are one value shown two ways; 1 and "1" are different values.
    if isinstance(expected, int) and isinstance(actual, int):
        return expected == actual
    return type(expected) is type(actual) and expected == actual
