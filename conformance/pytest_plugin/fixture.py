"""The `kvm_conformance` fixture: trace a VMM, compare its trace with a snapshot, lint it.

    def test_boot(kvm_conformance):
        traced = kvm_conformance.trace(["./my-vmm", "guest.bin"])  # must exit 0 (exit_status=)
        traced.matches()                  # snapshot named after the test: tests.test_vmm.test_boot
                                          # (a second unnamed one: tests.test_vmm.test_boot-2)
        traced.matches("boot-64")         # or a name of your choosing
        kvm_conformance.lint(traced)      # fails with the KVM usage rules' errors

    def test_scenario(kvm_conformance):
        kvm_conformance.matches_scenario("boot")   # a scenario of the project's configuration

A trace is kept only from a run that finished as asked: a VMM that exits with another status
than `exit_status`, outlives `timeout` or is killed fails the test and is never compared or
written; Ctrl-C or SIGTERM during a trace interrupts the session (pytest's exit status 2).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from conformance.compare.regression import CompareOptions
from conformance.gate.project import Project
from conformance.gate.scenarios import deadline, finished_run, trace_scenario
from conformance.lint import Finding, LintConfig, has_errors, lint
from conformance.lint.output import render_text
from conformance.model.document import TraceDocument, Value
from conformance.model.errors import ConformanceError
from conformance.model.events import KvmRunMode
from conformance.model.printable import shown_text
from conformance.model.scenarios import DEFAULT_TIMEOUT_SECONDS
from conformance.normalize.capture import Capture, capture_output
from conformance.pytest_plugin.snapshots import SnapshotSession

PYTEST_TOOL = "kvm-conformance pytest"
_Result = TypeVar("_Result")
_UNSAFE = re.compile(r"[^A-Za-z0-9._\-\[\]=,+@]")
_LONGEST_NAME = 200  # NAME.yaml.new and a temporary file's affixes stay under 255 bytes


def default_snapshot_name(nodeid: str) -> str:
    """A test's snapshot name: its node id with `/` and `::` as dots and `.py` dropped,
    `tests/test_vmm.py::test_boot[hello]` -> `tests.test_vmm.test_boot[hello]`."""
    path, _, rest = nodeid.partition("::")
    parts = (path.removesuffix(".py").replace("/", "."), rest.replace("::", "."))
    name = _UNSAFE.sub("_", ".".join(part for part in parts if part)).lstrip(".")
    if len(name.encode()) > _LONGEST_NAME:
        digest = hashlib.sha256(nodeid.encode()).hexdigest()[:12]
        name = f"{name[: _LONGEST_NAME - 13]}-{digest}"
    return name


@dataclass(frozen=True)
class TracedCommand:
    """A traced program that ran to its end: its normalized trace and what it wrote."""

    document: TraceDocument
    exit_status: int
    output: str
    error_output: str
    _owner: KvmConformance

    def matches(self, name: str | None = None, *, options: CompareOptions | None = None) -> None:
        """Fail the test with the diff unless the trace equals snapshot `name` (by default the
        test's own, named after its node id). `--kvm-snapshot-update`: it becomes the snapshot
        at the session's end. `options` opts kernel answers in, fields out."""
        __tracebackhide__ = True
        self._owner.assert_matches(name, self.document, options)


class KvmConformance:
    """Trace VMMs and compare their KVM calls with snapshots (this module's docstring)."""

    def __init__(
        self,
        session: Callable[[], SnapshotSession],
        project: Callable[[], Project],
        request: pytest.FixtureRequest,
    ) -> None:
        self._session = session
        self._project = project
        self._test = request.node.nodeid
        self._unnamed = 0  # matches() calls without a name so far in this test

    @property
    def snapshot_name(self) -> str:
        """The snapshot name this test's next `matches()` uses when given none: the node id's,
        then `-2`, `-3`... for the second and later ones (as insta numbers them), so that two
        traces of one test never share one snapshot."""
        base = default_snapshot_name(self._test)
        return base if self._unnamed == 0 else f"{base}-{self._unnamed + 1}"

    def trace(
        self,
        argv: Sequence[str],
        *,
        exit_status: int = 0,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        stdin: bytes = b"",
        kvm_run: KvmRunMode = "full",
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> TracedCommand:
        """Run `argv` under the tracer; fail the test unless it opened /dev/kvm and exited with
        `exit_status` within `timeout` seconds."""
        __tracebackhide__ = True
        source: dict[str, Value] = {"tool": PYTEST_TOOL, "argv": list(argv)}
        if kvm_run != "full":
            source["kvm_run"] = kvm_run
        directory = None if cwd is None else str(cwd)

        def traced() -> Capture:
            with deadline(timeout) as limit:
                captured = capture_output(
                    argv, source, kvm_run=kvm_run, input=stdin, env=env, cwd=directory
                )
            return finished_run(str(argv[0]), captured, exit_status, limit)

        return self._wrap(failing_on_error(traced))

    def matches_scenario(
        self, scenario: str, *, options: CompareOptions | None = None
    ) -> TracedCommand:
        """Trace the project's scenario `scenario` (or a built-in one of that name) and require
        it to equal snapshot `scenario`, the one `kvm-conformance check` compares with."""
        __tracebackhide__ = True
        chosen = failing_on_error(lambda: self._project().scenario(scenario))
        traced = self._wrap(failing_on_error(lambda: trace_scenario(chosen)))
        traced.matches(scenario, options=options)
        return traced

    def lint(
        self, traced: TracedCommand | TraceDocument, *, config: LintConfig | None = None
    ) -> list[Finding]:
        """Fail the test with the findings when a KVM usage rule finds an error in the trace;
        return every finding (warnings too). `config` defaults to the project's settings
        ([tool.kvm-conformance] disable), where rules are disabled with a reason."""
        __tracebackhide__ = True
        document = traced.document if isinstance(traced, TracedCommand) else traced
        chosen = config or failing_on_error(lambda: self._project().lint)
        findings = lint(document, chosen)
        if has_errors(findings):
            argv = document.source.get("argv")
            name = " ".join(map(str, argv)) if isinstance(argv, list) else str(document.path)
            pytest.fail(shown_text(render_text(findings, name, chosen)), pytrace=False)
        return findings

    def assert_matches(
        self, name: str | None, document: TraceDocument, options: CompareOptions | None
    ) -> None:
        __tracebackhide__ = True
        chosen = name if name is not None else self.snapshot_name
        if name is None:
            self._unnamed += 1
        failing_on_error(
            lambda: self._session().assert_matches(chosen, document, self._test, options)
        )

    def _wrap(self, traced: Capture) -> TracedCommand:
        return TracedCommand(
            traced.document,
            traced.outcome.exit_status,
            traced.output,
            traced.error_output,
            self,
        )


def failing_on_error(action: Callable[[], _Result]) -> _Result:
    """`action()`, or a test failure whose whole text is the project error's message: a diff,
    a snapshot's file:line, a command that did not run to its end. No traceback into the plugin.
    """
    __tracebackhide__ = True
    try:
        return action()
    except ConformanceError as error:
        message = str(error)
    # Outside the except block, so that the failure is not shown chained to the error.
    pytest.fail(shown_text(message), pytrace=False)
