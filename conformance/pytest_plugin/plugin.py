"""pytest plugin (entry point `pytest11: kvm_conformance`): VMM traces as snapshot tests.

    def test_boot(kvm_conformance):
        kvm_conformance.trace(["./my-vmm", "guest.bin"]).matches("my-vmm-boot")

    def test_our_hello(kvm_conformance):
        kvm_conformance.matches_scenario("hello")  # the VMM core's scenario against its snapshot

    def test_usage(kvm_conformance):
        kvm_conformance.lint(kvm_conformance.trace(["./my-vmm", "guest.bin"]))  # KVM usage rules

Snapshots are `<name>.yaml` in one directory: the ini option `kvm_conformance_snapshots`,
relative to the ini file's directory (or rootdir), default `expected` — the directory
`kvm-conformance check` reads, so both gates share one set of reviewed files. `--snapshot-update`
creates and rewrites them; without it a missing or differing snapshot fails the test with the
readable diff. The terminal summary says what was compared or written, and which snapshots no
test used (listed, never deleted).

Markers `needs_kvm`, `needs_ptrace`, `needs_qemu`, `needs_gcc` skip a test only when this host
lacks the resource; a test using the `kvm_conformance` fixture gets needs_kvm and needs_ptrace.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from conformance.compare.regression import CompareOptions
from conformance.gate.resources import REQUIREMENTS
from conformance.gate.scenarios import trace_scenario
from conformance.lint import Finding, LintConfig, has_errors, lint, project_config
from conformance.lint.output import render_text
from conformance.model.document import TraceDocument, Value
from conformance.model.errors import ConformanceError
from conformance.model.printable import shown_text
from conformance.normalize.capture import Capture, capture_output
from conformance.pytest_plugin.snapshots import SnapshotSession

SNAPSHOTS_INI = "kvm_conformance_snapshots"
DEFAULT_SNAPSHOTS = "expected"
PYTEST_TOOL = "kvm-conformance pytest"
_FIXTURE = "kvm_conformance"
_SESSION = pytest.StashKey[SnapshotSession]()
_DESELECTED = pytest.StashKey[int]()
_RAN_EVERY_TEST = pytest.StashKey[bool]()
_Result = TypeVar("_Result")


# -- options, markers, skips ----------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kvm-conformance", "KVM call snapshots")
    group.addoption(
        "--snapshot-update",
        action="store_true",
        default=False,
        help="create missing and rewrite differing KVM trace snapshots instead of failing",
    )
    parser.addini(
        SNAPSHOTS_INI,
        help=f"directory of KVM trace snapshots, relative to the ini file (default: "
        f"{DEFAULT_SNAPSHOTS})",
        default=DEFAULT_SNAPSHOTS,
    )


@pytest.hookimpl(trylast=True)  # after the terminal reporter exists: it knows about colour
def pytest_configure(config: pytest.Config) -> None:
    for marker, resource in REQUIREMENTS.items():
        config.addinivalue_line(
            "markers", f"{marker}: {resource.description} (skipped where it is missing)"
        )
    base = config.inipath.parent if config.inipath is not None else config.rootpath
    config.stash[_SESSION] = SnapshotSession(
        base / str(config.getini(SNAPSHOTS_INI)),
        update=bool(config.getoption("snapshot_update")),
        color=_terminal_has_colour(config),
    )
    config.stash[_DESELECTED] = 0


def _terminal_has_colour(config: pytest.Config) -> bool:
    if config.pluginmanager.get_plugin("terminalreporter") is None:  # -p no:terminal
        return False
    return config.get_terminal_writer().hasmarkup


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _FIXTURE in getattr(item, "fixturenames", ()):
            item.add_marker("needs_kvm")
            item.add_marker("needs_ptrace")


def pytest_deselected(items: Sequence[pytest.Item]) -> None:
    if items:
        items[0].config.stash[_DESELECTED] += len(items)


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker, resource in REQUIREMENTS.items():
        if item.get_closest_marker(marker) is not None:
            reason = resource.missing()
            if reason is not None:
                pytest.skip(reason)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Runs before the terminal summary (the reporter writes it after every sessionfinish).
    stopped_early = bool(session.shouldfail or session.shouldstop)  # -x, --maxfail
    stopped_early |= exitstatus == pytest.ExitCode.INTERRUPTED  # Ctrl-C
    session.config.stash[_RAN_EVERY_TEST] = (
        not stopped_early and session.config.stash[_DESELECTED] == 0
    )


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    session = config.stash[_SESSION]
    if not session.asserted:
        return
    terminalreporter.section(f"kvm-conformance snapshots ({session.store.directory})")
    complete = config.stash.get(_RAN_EVERY_TEST, False)
    verbose = int(config.getoption("verbose")) > 0  # -v: what was left out as not decisions
    for line in session.summary_lines(complete_run=complete, verbose=verbose):
        terminalreporter.write_line(line)


# -- the fixture ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TracedCommand:
    """A traced program: its normalized trace, how it ended, what it wrote to stderr."""

    document: TraceDocument
    exit_status: int
    error_output: str
    _session: SnapshotSession

    def matches(self, snapshot: str, *, options: CompareOptions | None = None) -> None:
        """Fail the test with the diff unless the trace equals snapshot `snapshot`
        (`--snapshot-update`: store it instead). `options` opts kernel answers in, fields out.
        """
        __tracebackhide__ = True
        _failing_on_error(lambda: self._session.assert_matches(snapshot, self.document, options))


class KvmConformance:
    """The `kvm_conformance` fixture: trace a VMM, compare with snapshots, lint its KVM usage."""

    def __init__(self, session: SnapshotSession, project: Path) -> None:
        self._session = session
        self._project = project  # where the nearest pyproject.toml's lint settings are found

    def trace(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> TracedCommand:
        """Run `argv` to its end under the tracer. Fails the test if it never opened /dev/kvm."""
        __tracebackhide__ = True
        source: dict[str, Value] = {"tool": PYTEST_TOOL, "argv": list(argv)}
        directory = None if cwd is None else str(cwd)
        traced = _failing_on_error(lambda: capture_output(argv, source, env=env, cwd=directory))
        if traced.outcome.message is not None:
            pytest.fail(shown_text(_with_stderr(traced.outcome.message, traced)), pytrace=False)
        return self._wrap(traced)

    def matches_scenario(
        self, scenario: str, *, options: CompareOptions | None = None
    ) -> TracedCommand:
        """Trace the VMM core's `scenario` and require it to equal snapshot `scenario`."""
        __tracebackhide__ = True
        traced = self._wrap(_failing_on_error(lambda: trace_scenario(scenario)))
        traced.matches(scenario, options=options)
        return traced

    def lint(
        self, traced: TracedCommand | TraceDocument, *, config: LintConfig | None = None
    ) -> list[Finding]:
        """Fail the test with the findings when a KVM usage rule finds an error in the trace;
        return every finding (warnings too). `config` defaults to [tool.kvm-conformance] of the
        nearest pyproject.toml, where rules are disabled with a reason.
        """
        __tracebackhide__ = True
        document = traced.document if isinstance(traced, TracedCommand) else traced
        chosen = config or _failing_on_error(lambda: project_config(None, self._project))
        findings = lint(document, chosen)
        if has_errors(findings):
            argv = document.source.get("argv")
            name = " ".join(map(str, argv)) if isinstance(argv, list) else str(document.path)
            pytest.fail(shown_text(render_text(findings, name, chosen)), pytrace=False)
        return findings

    def _wrap(self, traced: Capture) -> TracedCommand:
        return TracedCommand(
            traced.document, traced.outcome.exit_status, traced.error_output, self._session
        )


def _failing_on_error(action: Callable[[], _Result]) -> _Result:
    """`action()`, or a test failure whose whole text is the project error's message: a diff,
    a snapshot's file:line, a command that cannot run. No traceback into the plugin.
    """
    __tracebackhide__ = True
    try:
        return action()
    except ConformanceError as error:
        message = str(error)
    # Outside the except block, so that the failure is not shown chained to the error.
    pytest.fail(shown_text(message), pytrace=False)


def _with_stderr(message: str, traced: Capture) -> str:
    output = traced.error_output.strip()
    return f"{message}\nits stderr:\n{output}" if output else message


@pytest.fixture
def kvm_conformance(request: pytest.FixtureRequest) -> KvmConformance:
    """Trace VMMs and compare their KVM calls with snapshots (this module's docstring)."""
    return KvmConformance(request.config.stash[_SESSION], request.config.rootpath)
