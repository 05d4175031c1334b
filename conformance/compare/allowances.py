"""Rules files: the deviations from QEMU's reference a scenario allows, each with its reason.

    # traces/qemu/memory-1g.rules.yaml
    allow:
      - kind: extra            # a call QEMU does not make (here, or at this point)
        call: KVM_SET_TSS_ADDR
        reason: QEMU sets the TSS address from its vCPU thread's ...
      - kind: field            # a paired call whose field differs
        call: KVM_SET_USER_MEMORY_REGION
        field: in.memory_size  # a path covers everything below it
        thread: main           # optional, as `call` and `field` are
        reason: the guest needs 256 KiB, not QEMU's 1 GiB
    require:                   # reference calls the subject must make (missing ones are
      - call: KVM_SET_CPUID2   # otherwise fine: QEMU does more than a small VMM needs to)
        reason: without it the guest sees no CPUID leaves at all

A rule without a reason is refused: the point of the file is to say why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from conformance.model.errors import ConformanceError

DEVIATION_KINDS = ("extra", "field")
_RULE_KEYS = {"kind", "call", "field", "thread", "reason"}


class RulesError(ConformanceError):
    """A rules file that cannot be read or does not say what the format needs."""


@dataclass(frozen=True, slots=True)
class AllowRule:
    kind: str  # "extra" or "field"
    reason: str
    call: str | None = None
    field: str | None = None
    thread: str | None = None

    def allows(self, kind: str, thread: str, call: str, path: str = "") -> bool:
        return (
            kind == self.kind
            and (self.call is None or self.call == call)
            and (self.thread is None or self.thread == thread)
            and (self.field is None or _covers(self.field, path))
        )


@dataclass(frozen=True, slots=True)
class RequireRule:
    call: str
    reason: str


@dataclass(frozen=True, slots=True)
class Rules:
    allow: tuple[AllowRule, ...] = ()
    require: tuple[RequireRule, ...] = ()
    path: Path | None = None

    def allowing(self, kind: str, thread: str, call: str, path: str = "") -> AllowRule | None:
        return next((rule for rule in self.allow if rule.allows(kind, thread, call, path)), None)


def _covers(prefix: str, path: str) -> bool:
    return path == prefix or path.startswith((prefix + ".", prefix + "["))


def rules_beside(reference: Path) -> Path:
    """traces/qemu/memory-1g.yaml -> traces/qemu/memory-1g.rules.yaml"""
    return reference.with_name(reference.name.removesuffix(".yaml") + ".rules.yaml")


def load_rules(path: Path) -> Rules:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise RulesError(f"{path}: cannot read: {error.strerror}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise RulesError(f"{where}: not YAML: {getattr(error, 'problem', error)}") from None
    if data is None:
        return Rules(path=path)
    if not isinstance(data, dict) or set(data) - {"allow", "require"}:
        raise RulesError(f"{path}: expected a mapping with `allow:` and/or `require:` lists")
    allow = tuple(
        _allow_rule(path, index, item) for index, item in enumerate(_list(path, data, "allow"))
    )
    require = tuple(
        _require_rule(path, index, item) for index, item in enumerate(_list(path, data, "require"))
    )
    return Rules(allow, require, path)


def _list(path: Path, data: dict[object, object], key: str) -> list[object]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise RulesError(f"{path}: `{key}` must be a list of rules")
    return value


def _text(path: Path, where: str, item: dict[object, object], key: str) -> str | None:
    value = item.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise RulesError(f"{path}: {where}: `{key}` must be non-empty text")
    return value


def _checked(path: Path, where: str, item: object, keys: set[str]) -> dict[object, object]:
    if not isinstance(item, dict):
        raise RulesError(f"{path}: {where}: expected a mapping")
    unknown = sorted(str(key) for key in item if key not in keys)
    if unknown:
        raise RulesError(f"{path}: {where}: unknown key(s) {', '.join(unknown)}")
    if _text(path, where, item, "reason") is None:
        raise RulesError(f"{path}: {where}: every rule needs a `reason`")
    return item


def _allow_rule(path: Path, index: int, item: object) -> AllowRule:
    where = f"allow rule {index + 1}"
    rule = _checked(path, where, item, _RULE_KEYS)
    kind = rule.get("kind")
    if kind not in DEVIATION_KINDS:
        raise RulesError(f"{path}: {where}: `kind` must be one of {', '.join(DEVIATION_KINDS)}")
    field = _text(path, where, rule, "field")
    if field is not None and kind != "field":
        raise RulesError(f"{path}: {where}: `field` only applies to kind: field")
    return AllowRule(
        kind=str(kind),
        reason=str(rule["reason"]),
        call=_text(path, where, rule, "call"),
        field=field,
        thread=_text(path, where, rule, "thread"),
    )


def _require_rule(path: Path, index: int, item: object) -> RequireRule:
    where = f"require rule {index + 1}"
    rule = _checked(path, where, item, {"call", "reason"})
    call = _text(path, where, rule, "call")
    if call is None:
        raise RulesError(f"{path}: {where}: `call` names the call the subject must make")
    return RequireRule(call, str(rule["reason"]))
