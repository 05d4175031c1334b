"""Lint settings: which rules are off, each with the project's reason.

    [tool.kvm-conformance]
    disable = [{id = "KVMC008", reason = "our VMM targets one known kernel"}]

The project's configuration file is read by gate/project.py (with the line of every mistake);
this module holds what it yields. Every disabled rule needs a reason, so that a reader of the
project sees why a check is off.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from conformance.lint.catalog import RULES_BY_ID
from conformance.model.errors import ConformanceError


class LintConfigError(ConformanceError):
    """Lint settings that cannot be used."""


@dataclass(frozen=True)
class LintConfig:
    """Which rules are off, each with the project's reason."""

    disabled: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    source: str = "LintConfig"  # where it came from, for messages
    path: Path | None = None  # the configuration file it was read from

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
