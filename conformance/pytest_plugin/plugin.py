"""pytest plugin (entry point `pytest11: kvm_conformance`): VMM traces as snapshot tests.

The `kvm_conformance` fixture is fixture.py's. Snapshots are `<name>.yaml` in one directory:
the ini option `kvm_conformance_snapshots` (relative to the ini file), by default the project's
`snapshots` (`expected` in its root), the directory `kvm-conformance check` reads, so both
gates share one set of reviewed files. Every option and ini name carries our prefix, so the
plugin loads beside syrupy, pytest-regressions and other snapshot plugins:

    --kvm-snapshot-update         create missing and rewrite differing snapshots
    --kvm-snapshot-pending        write each missing or differing one as NAME.yaml.new
    --kvm-snapshot-delete-unused  delete snapshots no test used (only when every test passed)
    --kvm-snapshot-force          write even when CI is set (nothing is written there otherwise)

Snapshots are written once, by one process, at the session's end, and only when the session
was not interrupted; under pytest-xdist the workers hand what they saw to the controller, which
writes and prints the one summary. Unused snapshots are reported only when every test ran.

Markers `needs_kvm`, `needs_ptrace`, `needs_qemu`, `needs_gcc` skip a test only when this host
lacks the resource; a test using the `kvm_conformance` fixture gets needs_kvm and needs_ptrace.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest

from conformance.gate.project import Project, load_project
from conformance.gate.resources import REQUIREMENTS
from conformance.model.errors import ConformanceError
from conformance.pytest_plugin.fixture import PYTEST_TOOL, KvmConformance, default_snapshot_name
from conformance.pytest_plugin.snapshots import Ending, SnapshotSession
from conformance.snapshot.store import running_on_ci

SNAPSHOTS_INI = "kvm_conformance_snapshots"
_FIXTURE = "kvm_conformance"
_WORKER_OUTPUT = "kvm_conformance"
_STATE = pytest.StashKey["_State"]()


class _Worker(Protocol):
    """What pytest_testnodedown hands over of an xdist worker."""

    workeroutput: dict[str, object]


@dataclass
class _State:
    """The plugin's state for one pytest process; the project and snapshot session are made
    when a test first needs them, so that a project that never asserts a snapshot never has its
    configuration read."""

    config: pytest.Config
    update: bool
    pending: bool
    ci_note: str | None
    deselected: int = 0
    not_passed: set[str] = field(default_factory=set)  # node ids of tests that did not pass
    workers_interrupted: bool = False
    workers_lost: bool = False
    _project: Project | None = None
    _session: SnapshotSession | None = None

    def project(self) -> Project:
        if self._project is None:
            self._project = load_project(None, self.config.rootpath)
        return self._project

    def session(self) -> SnapshotSession:
        if self._session is None:
            self._session = SnapshotSession(
                self._directory(),
                update=self.update,
                pending=self.pending,
                color=_terminal_has_colour(self.config),
                tool=PYTEST_TOOL,
            )
        return self._session

    @property
    def started(self) -> bool:
        return self._session is not None

    # Hooks that need the state: this object is registered as a plugin of its own.

    def pytest_deselected(self, items: Sequence[pytest.Item]) -> None:
        self.deselected += len(items)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.failed or report.skipped:
            self.not_passed.add(report.nodeid)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: _Worker, error: object) -> None:
        """pytest-xdist's controller, as each worker ends: add what it saw."""
        output = getattr(node, "workeroutput", {}).get(_WORKER_OUTPUT)
        if not isinstance(output, dict):
            self.workers_lost = True  # a worker that crashed: its record is gone
            return
        self.deselected += int(output.get("deselected", 0))
        self.workers_interrupted |= bool(output.get("interrupted"))
        record = output.get("record")
        if isinstance(record, dict):
            try:
                self.session().merge(record)
            except ConformanceError as problem:  # the project's configuration, say
                self.workers_lost = True
                self.ci_note = str(problem)

    def _directory(self) -> Path:
        configured = str(self.config.getini(SNAPSHOTS_INI))
        if not configured:
            return self.project().snapshots
        inifile = self.config.inipath
        base = inifile.parent if inifile is not None else self.config.rootpath
        return base / configured


# -- options, markers, skips ----------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kvm-conformance", "KVM call snapshots (kvm-conformance)")
    group.addoption(
        "--kvm-snapshot-update",
        action="store_true",
        default=False,
        help="create missing and rewrite differing KVM trace snapshots instead of failing "
        "(written at the session's end, never from an interrupted session)",
    )
    group.addoption(
        "--kvm-snapshot-pending",
        action="store_true",
        default=False,
        help="write each missing or differing KVM trace snapshot beside it as NAME.yaml.new, "
        "for `kvm-conformance review`; the test still fails",
    )
    group.addoption(
        "--kvm-snapshot-delete-unused",
        action="store_true",
        default=False,
        help="delete KVM trace snapshots no test used, when every test ran and passed",
    )
    group.addoption(
        "--kvm-snapshot-force",
        action="store_true",
        default=False,
        help="write KVM trace snapshots even when CI is set (otherwise nothing is written on CI)",
    )
    parser.addini(
        SNAPSHOTS_INI,
        help="directory of KVM trace snapshots, relative to the ini file (default: the "
        "project's `snapshots`, ./expected beside its pyproject.toml)",
        default="",
    )


@pytest.hookimpl(trylast=True)  # after the terminal reporter exists: it knows about colour
def pytest_configure(config: pytest.Config) -> None:
    for marker, resource in REQUIREMENTS.items():
        config.addinivalue_line(
            "markers", f"{marker}: {resource.description} (skipped where it is missing)"
        )
    update = bool(config.getoption("kvm_snapshot_update"))
    pending = bool(config.getoption("kvm_snapshot_pending")) and not update
    note = None
    if (update or pending) and running_on_ci() and not config.getoption("kvm_snapshot_force"):
        asked = "--kvm-snapshot-update" if update else "--kvm-snapshot-pending"
        note = f"CI is set: {asked} writes nothing on CI (add --kvm-snapshot-force); comparing"
        update = pending = False
    state = _State(config, update=update, pending=pending, ci_note=note)
    config.stash[_STATE] = state
    config.pluginmanager.register(state, "kvm-conformance-snapshots")


def _terminal_has_colour(config: pytest.Config) -> bool:
    if config.pluginmanager.get_plugin("terminalreporter") is None:  # -p no:terminal
        return False
    return config.get_terminal_writer().hasmarkup


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _FIXTURE in getattr(item, "fixturenames", ()):
            item.add_marker("needs_kvm")
            item.add_marker("needs_ptrace")


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker, resource in REQUIREMENTS.items():
        if item.get_closest_marker(marker) is not None:
            reason = resource.missing()
            if reason is not None:
                pytest.skip(reason)


# -- the end of the session -------------------------------------------------------------------


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Runs before the terminal summary (the reporter writes it after every sessionfinish).
    config = session.config
    state = config.stash[_STATE]
    interrupted = exitstatus == pytest.ExitCode.INTERRUPTED or state.workers_interrupted
    workeroutput = getattr(config, "workeroutput", None)
    if isinstance(workeroutput, dict):  # an xdist worker: the controller writes
        workeroutput[_WORKER_OUTPUT] = {
            "record": state.session().export() if state.started else None,
            "deselected": state.deselected,
            "interrupted": interrupted,
        }
        return
    if not state.started:
        return
    snapshots = state.session()
    ending = Ending(
        interrupted=interrupted or state.workers_lost,
        complete=_every_test_ran(session, state) and not interrupted,
        all_passed=not state.not_passed and session.testsfailed == 0,
        delete_unused=bool(config.getoption("kvm_snapshot_delete_unused")),
        not_run=frozenset(default_snapshot_name(test) for test in state.not_passed),
    )
    try:
        snapshots.finish(ending)
    except KeyboardInterrupt:  # held while writing, so it came after every file was written
        session.exitstatus = pytest.ExitCode.INTERRUPTED
    except ConformanceError as problem:  # a snapshot that could not be written
        state.ci_note = str(problem)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if snapshots.record.clashes and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _every_test_ran(session: pytest.Session, state: _State) -> bool:
    """Whether the whole suite ran: no -k/-m/--deselect, --lf, --sw, path or node selection,
    -x/--maxfail stop, nor a lost worker. Only then can a snapshot be known to be unused."""
    config = session.config
    if session.shouldfail or session.shouldstop or state.deselected or state.workers_lost:
        return False
    if any(config.getoption(name, False) for name in ("lf", "stepwise", "stepwise_skip")):
        return False
    if config.args_source is not pytest.Config.ArgsSource.ARGS:
        return True
    whole = {config.rootpath.resolve()} | {
        (config.rootpath / path).resolve() for path in config.getini("testpaths")
    }
    invoked = config.invocation_params.dir
    return all((invoked / argument).resolve() in whole for argument in config.args)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    state = config.stash.get(_STATE, None)
    if state is None or hasattr(config, "workerinput") or not state.started:
        return
    snapshots = state.session()
    if not snapshots.asserted and state.ci_note is None:
        return
    terminalreporter.section(f"kvm-conformance snapshots ({snapshots.store.directory})")
    if state.ci_note is not None:
        terminalreporter.write_line(state.ci_note)
    verbose = int(config.getoption("verbose")) > 0  # -v: what was left out as not decisions
    for line in snapshots.summary_lines(verbose=verbose):
        terminalreporter.write_line(line)


# -- the fixture ----------------------------------------------------------------------------


@pytest.fixture
def kvm_conformance(request: pytest.FixtureRequest) -> KvmConformance:
    """Trace VMMs and compare their KVM calls with snapshots (fixture.py's docstring)."""
    state = request.config.stash[_STATE]
    return KvmConformance(state.session, state.project, request)
