"""The VMM core's scenarios against expected/, through our own pytest plugin: what
`kvm-conformance check` gates, as a VMM author would write it. `pytest --snapshot-update`
rewrites expected/ from here as `check --update` does.
"""

from __future__ import annotations

import pytest

from conformance.model.scenarios import SCENARIOS
from conformance.pytest_plugin.plugin import KvmConformance


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_scenario_matches_its_expected_trace(
    kvm_conformance: KvmConformance, scenario: str
) -> None:
    kvm_conformance.matches_scenario(scenario)
