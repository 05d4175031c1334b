"""Allowances: the deviations from QEMU's reference a scenario permits, each with its reason.

    # conformance/qemu/references/memory-1g.allowances.yaml
    allow:
      - kind: extra            # a call QEMU does not make (here, or at this point)
        call: KVM_SET_TSS_ADDR
        reason: QEMU sets the TSS address from its vCPU thread's ...
      - kind: field            # a paired call whose field differs
        call: KVM_SET_USER_MEMORY_REGION
        field: in.memory_size  # a path covers everything below it
        thread: main           # optional, as `call` and `field` are
        reason: the guest needs 256 KiB, not QEMU's 1 GiB
      - kind: extra
        call: KVM_CHECK_EXTENSION
        fd: vm                 # the subject call's fd role, exactly
        arg: KVM_CAP_READONLY_MEM   # its argument, where it names what is asked
        reason: asking the VM fd gets the same answer per VM
    require:                   # reference calls the subject must make (missing ones are
      - call: KVM_SET_CPUID2   # otherwise fine: QEMU does more than a small VMM needs to)
        reason: without it the guest sees no CPUID leaves at all

An allowance without a reason is refused: the point of the file is to say why. An allowance
matches exactly what it names and nothing wider: every key it gives must match, and a key it
leaves out matches anything.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import yaml

from conformance.model.errors import ConformanceError
from conformance.model.input_files import read_input_text

_RULE_KEYS = {"kind", "call", "field", "thread", "fd", "arg", "reason"}


class DeviationKind(enum.Enum):
    """How a subject's call departs from QEMU's reference (compare/conformance.py finds them)."""

    EXTRA = "extra"  # a call QEMU does not make (here, or at this point)
    FIELD = "field"  # a paired call whose field differs
    MISSING = "missing"  # a call an allowances file requires that the subject never makes


_ALLOWABLE = (DeviationKind.EXTRA, DeviationKind.FIELD)  # a missing required call never is


class AllowancesError(ConformanceError):
    """An allowances file that cannot be read or does not say what the format needs."""


class Judged(Protocol):
    """What an allowance is matched against: a deviation (compare/conformance.py's)."""

    @property
    def kind(self) -> DeviationKind: ...
    @property
    def thread(self) -> str: ...
    @property
    def call(self) -> str: ...
    @property
    def path(self) -> str: ...  # the field, for a field deviation; "" otherwise
    @property
    def fd(self) -> str: ...  # the subject call's fd role
    @property
    def arg(self) -> str: ...  # its argument, where it names what is asked


@dataclass(frozen=True, slots=True)
class Allowance:
    kind: DeviationKind  # EXTRA or FIELD
    reason: str
    call: str | None = None
    field: str | None = None
    thread: str | None = None
    fd: str | None = None  # the subject call's fd role
    arg: str | None = None  # the argument that names what is asked (KVM_CHECK_EXTENSION's)

    def allows(self, deviation: Judged) -> bool:
        return (
            deviation.kind == self.kind
            and (self.call is None or self.call == deviation.call)
            and (self.thread is None or self.thread == deviation.thread)
            and (self.field is None or _covers(self.field, deviation.path))
            and (self.fd is None or self.fd == deviation.fd)
            and (self.arg is None or self.arg == deviation.arg)
        )


@dataclass(frozen=True, slots=True)
class Requirement:
    call: str
    reason: str


@dataclass(frozen=True, slots=True)
class Allowances:
    allow: tuple[Allowance, ...] = ()
    require: tuple[Requirement, ...] = ()
    path: Path | None = None

    def allowing(self, deviation: Judged) -> Allowance | None:
        return next((rule for rule in self.allow if rule.allows(deviation)), None)


def _covers(prefix: str, path: str) -> bool:
    return path == prefix or path.startswith((prefix + ".", prefix + "["))


def allowances_beside(reference: Path) -> Path:
    """references/memory-1g.yaml -> references/memory-1g.allowances.yaml"""
    return reference.with_name(reference.name.removesuffix(".yaml") + ".allowances.yaml")


def load_allowances(path: Path) -> Allowances:
    def error(line: int | None, message: str) -> AllowancesError:
        return AllowancesError(f"{path}:{line}: {message}" if line else f"{path}: {message}")

    text = read_input_text(path, error)  # a FIFO or a file that is not UTF-8: one clear line
    try:
        # A small hand-written file: PyYAML's safe loader is right for it, once no tag, anchor
        # or alias is in it (a tag on a list would otherwise be kept silently as plain data).
        for event in yaml.parse(text, Loader=yaml.CSafeLoader):
            if isinstance(event, yaml.NodeEvent) and (
                event.anchor is not None or getattr(event, "tag", None) is not None
            ):
                line = event.start_mark.line + 1 if event.start_mark else None
                raise error(line, "YAML tags, anchors and aliases are not allowed")
        data = yaml.load(text, Loader=yaml.CSafeLoader)
    except yaml.MarkedYAMLError as problem:
        mark = problem.problem_mark or problem.context_mark
        raise error(mark.line + 1 if mark else None, f"not YAML: {problem.problem}") from None
    except yaml.YAMLError as problem:
        raise error(None, f"not YAML: {problem}") from None
    if data is None:
        return Allowances(path=path)
    if not isinstance(data, dict) or set(data) - {"allow", "require"}:
        raise AllowancesError(f"{path}: expected a mapping with `allow:` and/or `require:` lists")
    allow = tuple(
        _allow_rule(path, index, item) for index, item in enumerate(_list(path, data, "allow"))
    )
    require = tuple(
        _require_rule(path, index, item) for index, item in enumerate(_list(path, data, "require"))
    )
    return Allowances(allow, require, path)


def _list(path: Path, data: dict[object, object], key: str) -> list[object]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise AllowancesError(f"{path}: `{key}` must be a list of rules")
    return value


def _text(path: Path, where: str, item: dict[object, object], key: str) -> str | None:
    value = item.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise AllowancesError(f"{path}: {where}: `{key}` must be non-empty text")
    return value


def _checked(path: Path, where: str, item: object, keys: set[str]) -> dict[object, object]:
    if not isinstance(item, dict):
        raise AllowancesError(f"{path}: {where}: expected a mapping")
    unknown = sorted(str(key) for key in item if key not in keys)
    if unknown:
        raise AllowancesError(f"{path}: {where}: unknown key(s) {', '.join(unknown)}")
    if _text(path, where, item, "reason") is None:
        raise AllowancesError(f"{path}: {where}: every rule needs a `reason`")
    return item


def _allow_rule(path: Path, index: int, item: object) -> Allowance:
    where = f"allow rule {index + 1}"
    rule = _checked(path, where, item, _RULE_KEYS)
    kinds = {kind.value: kind for kind in _ALLOWABLE}
    kind = kinds.get(str(rule.get("kind")))
    if kind is None:
        raise AllowancesError(f"{path}: {where}: `kind` must be one of {', '.join(kinds)}")
    field = _text(path, where, rule, "field")
    if field is not None and kind is not DeviationKind.FIELD:
        raise AllowancesError(f"{path}: {where}: `field` only applies to kind: field")
    return Allowance(
        kind=kind,
        reason=str(rule["reason"]),
        call=_text(path, where, rule, "call"),
        field=field,
        thread=_text(path, where, rule, "thread"),
        fd=_text(path, where, rule, "fd"),
        arg=_text(path, where, rule, "arg"),
    )


def _require_rule(path: Path, index: int, item: object) -> Requirement:
    where = f"require rule {index + 1}"
    rule = _checked(path, where, item, {"call", "reason"})
    call = _text(path, where, rule, "call")
    if call is None:
        raise AllowancesError(f"{path}: {where}: `call` names the call the subject must make")
    return Requirement(call=call, reason=str(rule["reason"]))
