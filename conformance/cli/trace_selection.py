"""`trace -e`: which calls a trace shows, in strace's qualifier syntax.

    -e trace=ioctl,mmap          only these system calls
    -e ioctl=KVM_RUN,KVM_SET_REGS only these ioctls (and, without trace=, no other call)
    -e ioctl=!KVM_RUN            every ioctl but these (`!` negates a list, as in strace)

Threads starting and ending (`+++ ... +++`) are always shown, as strace shows them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from conformance.abi.ioctls import IOCTLS
from conformance.model import events
from conformance.model.errors import ConformanceError
from conformance.tracer.seccomp import TRACED_SYSCALL_NAMES

# The calls a trace can show, by the name `-e trace=` gives them: every call the tracer stops
# at (eventfd is recorded as eventfd2, the call the kernel makes of it) and the summary event.
CALL_NAMES = (
    *(name for name in TRACED_SYSCALL_NAMES if name != "eventfd"),
    "kvm_run_summary",
)
_ALWAYS_SHOWN = (events.TaskStarted, events.TaskExited)


class SelectionError(ConformanceError):
    """An `-e` expression that names no qualifier, call or ioctl this tracer knows."""


@dataclass(frozen=True, slots=True)
class _Names:
    names: frozenset[str]
    negated: bool

    def chooses(self, name: str) -> bool:
        return (name in self.names) != self.negated


@dataclass(frozen=True, slots=True)
class Selection:
    calls: _Names | None = None
    ioctls: _Names | None = None

    def chooses(self, event: events.Event) -> bool:
        if isinstance(event, _ALWAYS_SHOWN):
            return True
        name = events.call_name(event)
        if self.calls is not None and not self.calls.chooses(name):
            return False
        if self.ioctls is None:
            return True
        if not isinstance(event, events.Ioctl):
            return self.calls is not None  # ioctl= alone shows ioctls only
        return self.ioctls.chooses(event.name or f"{event.request:#x}")

    def wrap(self, writer: Callable[[events.Event], None]) -> Callable[[events.Event], None]:
        if self.calls is None and self.ioctls is None:
            return writer

        def chosen(event: events.Event) -> None:
            if self.chooses(event):
                writer(event)

        return chosen


def parse_selection(expressions: Sequence[str]) -> Selection:
    """`-e trace=...` and `-e ioctl=...`, each at most once."""
    chosen: dict[str, _Names] = {}
    for expression in expressions:
        qualifier, equals, listed = expression.partition("=")
        if not equals or qualifier not in ("trace", "ioctl"):
            raise SelectionError(
                f"-e {expression}: expected trace=CALL,... or ioctl=REQUEST,... "
                "(a leading ! selects all but those)"
            )
        if qualifier in chosen:
            raise SelectionError(f"-e {qualifier}= given twice")
        negated = listed.startswith("!")
        names = frozenset(name for name in listed.removeprefix("!").split(",") if name)
        known = CALL_NAMES if qualifier == "trace" else IOCTLS
        unknown = sorted(name for name in names if name not in known)
        if unknown or not names:
            what = "system call" if qualifier == "trace" else "KVM ioctl"
            hint = f" (known: {', '.join(CALL_NAMES)})" if qualifier == "trace" else ""
            shown = ", ".join(unknown) or "nothing"
            raise SelectionError(f"-e {expression}: no {what} named {shown}{hint}")
        chosen[qualifier] = _Names(names, negated)
    return Selection(calls=chosen.get("trace"), ioctls=chosen.get("ioctl"))
