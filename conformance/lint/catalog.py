"""The rule table: every rule, in id order. docs/rules.md is generated from it."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from conformance.lint import capabilities, cpuid_msr, irq, lifecycle, memory, mmio
from conformance.lint.engine import Rule

RULES: tuple[Rule, ...] = tuple(
    sorted(
        (
            *memory.RULES,
            *cpuid_msr.RULES,
            *irq.RULES,
            *lifecycle.RULES,
            *mmio.RULES,
            *capabilities.RULES,
        ),
        key=lambda rule: rule.id,
    )
)
RULES_BY_ID: Mapping[str, Rule] = MappingProxyType({rule.id: rule for rule in RULES})
