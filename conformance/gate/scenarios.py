"""Tracing a built-in scenario: the VMM core's program, traced as its record says.

`trace_scenario` runs `python -m conformance run SCENARIO` under the tracer, with the provenance
`check` and the pytest plugin store in `source:`, and refuses a run that did not finish: a
truncated trace must neither pass as a difference to explain nor be stored as the expected one.
"""

from __future__ import annotations

import sys

from conformance.model.document import Value
from conformance.model.errors import ConformanceError
from conformance.model.scenarios import scenario as find_scenario
from conformance.normalize.capture import Capture, capture_output

SCENARIO_TOOL = "kvm-conformance vmm core"
_FAILED_RUN_STATUSES = (2, 3)  # `kvm-conformance run`: usage/environment error, guest fault


class ScenarioRunError(ConformanceError):
    """The VMM core did not finish a scenario under the tracer; its trace would be truncated."""


def trace_scenario(name: str) -> Capture:
    """Our VMM core running scenario `name`, traced: the document `expected/<name>.yaml` holds."""
    scenario = find_scenario(name)
    source: dict[str, Value] = {"tool": SCENARIO_TOOL, "scenario": scenario.name}
    if scenario.kvm_run != "full":
        source["kvm_run"] = scenario.kvm_run
    traced = capture_output(scenario_argv(scenario.name), source, kvm_run=scenario.kvm_run)
    error_output = traced.error_output.strip()
    if traced.outcome.exit_status in _FAILED_RUN_STATUSES and error_output:
        last_line = error_output.splitlines()[-1]
        raise ScenarioRunError(
            f"scenario {scenario.name} failed under the tracer "
            f"(status {traced.outcome.exit_status}): {last_line}"
        )
    return traced


def scenario_argv(name: str) -> list[str]:
    return [sys.executable, "-m", "conformance", "run", name]
