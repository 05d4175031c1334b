"""The rule object and its findings.

A rule is data plus a check: the check reads a normalized trace document and yields `Hit`s (which
thread, which call, what is wrong); the engine turns them into `Finding`s carrying the rule's id,
the call's request name and its line in the trace file, so that rule modules stay about KVM.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from conformance.model.document import TraceDocument


class Severity(enum.Enum):
    ERROR = "error"  # the VMM is wrong: guest state lost, undefined behaviour, a refused call
    WARNING = "warning"  # works on this kernel, breaks on another or under another workload


@dataclass(frozen=True, slots=True)
class Hit:
    """What a check found: the call (thread role, 0-based index in that thread) and why."""

    thread: str
    index: int
    message: str
    severity: Severity | None = None  # None: the rule's own severity


@dataclass(frozen=True, slots=True)
class Finding:
    rule_id: str
    severity: Severity
    thread: str
    index: int  # 0-based position of the call in its thread's list
    request: str  # the ioctl request, or the syscall for other calls ("munmap")
    message: str
    line: int | None = None  # the call's line in the trace file, when it was loaded from one

    @property
    def where(self) -> str:
        return f"{self.thread}[{self.index}] {self.request}"


Check = Callable[[TraceDocument], Iterable[Hit]]


@dataclass(frozen=True, slots=True)
class Rule:
    id: str  # KVMC001...
    name: str  # PascalCase, for SARIF's reportingDescriptor.name
    title: str  # one line: what the VMM did wrong
    severity: Severity
    # Public incidents the rule comes from, "tracker#number" (GitHub owner/repo#number or
    # project#number). Empty where no public incident is known: the rule then rests on the KVM
    # API documentation, which `rationale` cites.
    incidents: tuple[str, ...]
    rationale: str  # a paragraph for docs/rules.md and SARIF's fullDescription
    check: Check
    # Where the kernel shows the rule holds, when no incident is public: "file (function)".
    kernel_source: tuple[str, ...] = ()

    @property
    def cited(self) -> str:
        """What the rule rests on, for people: its incidents, else the kernel source or docs."""
        if self.incidents:
            return ", ".join(self.incidents)
        if self.kernel_source:
            return "none; kernel source: " + ", ".join(self.kernel_source)
        return "none (KVM API documentation)"

    def findings(self, document: TraceDocument) -> list[Finding]:
        found = []
        for hit in self.check(document):
            call = document.threads[hit.thread][hit.index]
            found.append(
                Finding(
                    rule_id=self.id,
                    severity=hit.severity or self.severity,
                    thread=hit.thread,
                    index=hit.index,
                    request=call.name,
                    message=hit.message,
                    line=call.line,
                )
            )
        return found
