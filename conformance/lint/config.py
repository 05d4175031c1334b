"""Per-project lint settings: `[tool.kvm-conformance]` in pyproject.toml.

    [tool.kvm-conformance]
    disable = [{id = "KVMC008", reason = "our VMM targets one known kernel"}]

Only `disable` is read here; other keys of the table belong to other commands. Every disabled
rule needs a reason, so that a reader of the project sees why a check is off.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from conformance.lint.catalog import RULES_BY_ID
from conformance.model.errors import ConformanceError
from conformance.model.input_files import read_input_text

TABLE = "tool.kvm-conformance"


class LintConfigError(ConformanceError):
    """A [tool.kvm-conformance] table that cannot be used."""


@dataclass(frozen=True)
class LintConfig:
    """Which rules are off, each with the project's reason."""

    disabled: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    source: str = "LintConfig"  # where it came from, for messages
    path: Path | None = None  # the pyproject.toml it was read from

    def __post_init__(self) -> None:
        for rule_id, reason in self.disabled.items():
            if rule_id not in RULES_BY_ID:
                known = ", ".join(RULES_BY_ID)
                raise LintConfigError(
                    f"{self.source}: unknown rule id {rule_id!r} in disable (known: {known})"
                )
            if not reason.strip():
                raise LintConfigError(f"{self.source}: disabling {rule_id} needs a reason")

    def line_of(self, rule_id: str) -> int | None:
        """The line of the file that disables `rule_id` (its quoted id), for SARIF."""
        if self.path is None:
            return None
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            return None
        quoted = (f'"{rule_id}"', f"'{rule_id}'")
        return next((n for n, line in enumerate(lines, 1) if any(q in line for q in quoted)), None)


def project_config(explicit: Path | None, start: Path) -> LintConfig:
    """The lint settings a command or test uses: `explicit` (--config), else those of the
    nearest pyproject.toml from `start` up, else none (every rule on)."""
    found = explicit if explicit is not None else find_pyproject(start)
    return load_config(found) if found is not None else LintConfig()


def find_pyproject(start: Path) -> Path | None:
    """The nearest pyproject.toml in `start` or a directory above it."""
    for directory in (start, *start.parents):
        candidate = directory / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def load_config(path: Path) -> LintConfig:
    def error(line: int | None, message: str) -> LintConfigError:
        return LintConfigError(f"{path}:{line}: {message}" if line else f"{path}: {message}")

    text = read_input_text(path, error)  # a FIFO or a file that is not UTF-8: one clear line
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as problem:
        raise LintConfigError(f"{path}: not valid TOML: {problem}") from None
    tool = document.get("tool", {})
    table = tool.get("kvm-conformance", {}) if isinstance(tool, dict) else {}
    if not isinstance(table, dict):
        raise LintConfigError(f"{path}: [{TABLE}] must be a table")
    disabled = _disabled(table.get("disable", []), path)
    return LintConfig(disabled, source=f"{path} [{TABLE}]", path=path)


def _disabled(items: object, path: Path) -> dict[str, str]:
    where = f"{path} [{TABLE}] disable"
    if not isinstance(items, list):
        raise LintConfigError(f'{where}: must be a list of {{id = "KVMC...", reason = "..."}}')
    disabled: dict[str, str] = {}
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            raise LintConfigError(f'{where}: each entry needs id = "KVMC..." and a reason')
        unknown = sorted(set(item) - {"id", "reason"})
        if unknown:
            raise LintConfigError(f"{where}: unknown key(s) {unknown} for {item['id']}")
        reason = item.get("reason")
        if not isinstance(reason, str):
            raise LintConfigError(f"{where}: disabling {item['id']} needs a reason")
        disabled[item["id"]] = reason
    return disabled
