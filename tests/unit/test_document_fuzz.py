"""Fuzzing trace documents: whatever a file holds, only project errors come out.

Real traces (expected/, conformance/qemu/references/) are cut into small documents of a few
consecutive calls and mutated where the grammar has a place: a scalar replaced by a wrong type,
an extreme or YAML-1.1-only int, a tag, an anchor, a control character; a key or a role made
something else; a value nested 40 deep; a character of YAML's syntax put in or taken out. Each
mutant goes through the loader, and when it loads, through lint, the conformance check against a
real reference and the reports. Allowed outcomes: a document, or a SnapshotError (exit status 2)
whose message holds no raw control character. The fast reader and libyaml alone must agree on
every mutant they both read.

10,000 mutants a run (hypothesis, derandomized so that CI runs the same ones): about 30 s of CPU
here; `KVM_CONFORMANCE_FUZZ_EXAMPLES` runs more.
"""

from __future__ import annotations

import os
import re
from functools import cache
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conformance.compare.allowances import load_allowances
from conformance.compare.conformance import compare_with_reference
from conformance.lint import LintConfig, lint
from conformance.lint.output import render_json, render_text
from conformance.lint.sarif import render_sarif
from conformance.model.document import TraceDocument
from conformance.model.printable import shown_text
from conformance.report.deviations import render_conformance
from conformance.snapshot import format as snapshot_format
from conformance.snapshot.store import SnapshotError, load_document, read_document

ROOT = Path(__file__).resolve().parents[2]
CORPUS = sorted(
    [*ROOT.glob("expected/*.yaml"), *ROOT.glob("conformance/qemu/references/*.yaml")],
)
CORPUS = [path for path in CORPUS if not path.name.endswith(".allowances.yaml")]
REFERENCE = ROOT / "conformance" / "qemu" / "references" / "tiny-bios.yaml"
EXAMPLES = int(os.environ.get("KVM_CONFORMANCE_FUZZ_EXAMPLES", "10000"))
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")

HEADER = "schema: kvm-conformance/2\nsource:\n  scenario: fuzz\n  tool: qemu\nthreads:\n"

# What a mutation puts where a value was: other types, ints YAML 1.1 reads but the format does
# not, ints past 64 bits, tags, anchors and aliases, control characters, deep nesting.
VALUES = [
    "+5", "1_000", "0777", "0o17", "0b101", "1:30", "190:20:30", "-0x", "0x1g", "1e3", ".inf",
    "-.5", "~", "null", "yes", "off", "2001-12-14", "18446744073709551616", "-9223372036854775809",
    "9" * 5000, "0x" + "f" * 17, "''", '""', '"\\e[2J\\e]0;title\\a"', '"\\x9b31m"',
    '"a\\u202eb"', "'kvm_run:vcpu0'", "[]", "{}", "[1, [2, [3]]]", "{a: 1}", "{call: ioctl}",
    "!!python/object/apply:os.system [echo]", "!!str x", "!custom 1", "&anchor 1", "*anchor",
    "[" * 40 + "]" * 40, "{a: " * 40 + "1" + "}" * 40, "|\n  text", ">-\n  folded",
    "? complex", "- item", "x #comment", "@reserved", "`tick`", "%directive", "a: b",
]  # fmt: skip
KEYS = ["1", "yes", "null", "[a]", "{a: 1}", '"\\e[2J"', "'x y'", "call", "in", "<<", "-"]
ROLES = ["'\\e[2Jmain'", "[main]", "1", "'vcpu 0'", "main#2", "proc0/main", '"\\x00"', "~"]
CHARACTERS = [
    *"{}[],:'\"#&*!|>%@`-?\t\\ ",
    "\n", "\r", "\x85", "\u2028", "\ufeff", "\x1b", "\x00", "\x7f", "\x9b", "é",
]  # fmt: skip
_SCALAR = re.compile(r"(?:(?<=: )|(?<=\[)|(?<=, )|(?<=- ))[^\s{}\[\],:][^\s{}\[\],]*")
_KEY = re.compile(r"(?<=[{ ])[A-Za-z_]+(?=: )")


@cache
def _windows() -> list[str]:
    """Each corpus trace cut into small documents: up to 2 consecutive calls of one thread."""
    windows = []
    for path in CORPUS:
        lines = path.read_text(encoding="utf-8").split("\n")
        document = read_document(path)
        for role, calls in document.threads.items():
            starts = [call.line for call in calls if call.line is not None]
            ends = [*starts[1:], _thread_end(lines, starts[-1])] if starts else []
            for first in range(0, len(starts), 2):
                chunk = lines[starts[first] - 1 : ends[min(first + 1, len(starts) - 1)] - 1]
                windows.append(f"{HEADER}  {_quoted(role)}:\n" + "\n".join(chunk) + "\n")
    return windows


def _thread_end(lines: list[str], last_start: int) -> int:
    """The line after a thread's last call (1-based): the next line at indent 2 or less."""
    for number in range(last_start + 1, len(lines) + 1):
        line = lines[number - 1]
        if not line.startswith("   ") and not line.startswith("  - "):
            return number
    return len(lines) + 1


def _quoted(role: str) -> str:
    return f"'{role}'" if ":" in role else role


def _replace(text: str, pattern: re.Pattern[str], choice: int, new: str) -> str:
    found = list(pattern.finditer(text))
    if not found:
        return text
    match = found[choice % len(found)]
    return text[: match.start()] + new + text[match.end() :]


@st.composite
def mutants(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(_windows()))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["value", "key", "role", "insert", "delete", "duplicate"]))
        choice = draw(st.integers(0, 1 << 16))
        if kind == "value":
            text = _replace(text, _SCALAR, choice, draw(st.sampled_from(VALUES)))
        elif kind == "key":
            text = _replace(text, _KEY, choice, draw(st.sampled_from(KEYS)))
        elif kind == "role":
            role = "  " + draw(st.sampled_from(ROLES)) + ":"
            text = "\n".join(
                role if re.fullmatch(r"  [^ -].*:", line) else line for line in text.split("\n")
            )
        elif kind == "insert":
            at = choice % (len(text) + 1)
            text = text[:at] + draw(st.sampled_from(CHARACTERS)) + text[at:]
        elif kind == "delete" and text:
            at = choice % len(text)
            text = text[:at] + text[at + 1 :]
        else:  # a call written twice: two keys the same, or a repeated line
            lines = text.split("\n")
            at = choice % len(lines)
            lines.insert(at, lines[at])
            text = "\n".join(lines)
    return text


@cache
def _reference() -> TraceDocument:
    return read_document(REFERENCE)


def _whole_compose(text: str) -> TraceDocument:
    """The same text read by libyaml alone (the loader's path for other layouts)."""
    root = snapshot_format._compose(text, "fuzz.yaml")
    assert root is not None
    return snapshot_format._Document("fuzz.yaml", {}).build(root)


def _calls(document: TraceDocument) -> dict[str, list[tuple[object, int | None]]]:
    return {role: [(c.entry, c.line) for c in calls] for role, calls in document.threads.items()}


@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(mutants())
def test_mutated_documents_give_documents_or_project_errors(text: str) -> None:
    try:
        document = load_document(text, "fuzz.yaml")
    except SnapshotError as error:
        assert error.exit_status == 2
        assert not _CONTROL.search(str(error)), str(error)
        assert str(error).startswith("fuzz.yaml")
        try:
            _whole_compose(text)
        except SnapshotError:
            return
        # The fast reader may refuse what libyaml alone reads only by saying so for the same
        # reason; both must refuse the same documents.
        raise AssertionError(f"libyaml alone reads what the loader refused: {error}") from None
    try:
        alone = _whole_compose(text)
    except SnapshotError as error:
        raise AssertionError(f"the loader read what libyaml alone refuses: {error}") from None
    assert _calls(alone) == _calls(document) and alone.source == document.source
    findings = lint(document, LintConfig())
    for rendered in (
        render_text(findings, "fuzz.yaml", LintConfig()),
        render_json(findings, "fuzz.yaml", LintConfig()),
        render_sarif(
            findings, Path("fuzz.yaml"), LintConfig(), root=ROOT, version="0", home=None, docs=None
        ),
    ):
        assert not _CONTROL.search(shown_text(rendered).replace("\n", "").replace("\t", ""))
    allowances = load_allowances(REFERENCE.with_name("tiny-bios.allowances.yaml"))
    result = compare_with_reference(document, _reference(), allowances)
    assert isinstance(render_conformance(result, "fuzz"), str)
