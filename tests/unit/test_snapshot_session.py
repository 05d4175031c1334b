"""The plugin's pytest-free snapshot session: claims, xdist records, and the session's end."""

from __future__ import annotations

from pathlib import Path

import pytest

from conformance.model.document import TraceCall, TraceDocument
from conformance.pytest_plugin.fixture import default_snapshot_name
from conformance.pytest_plugin.snapshots import Ending, SnapshotNameClash, SnapshotSession

DOCUMENT = TraceDocument(
    {"tool": "t", "exit_status": 0}, {"main": [TraceCall({"call": "open", "ret": "kvm"})]}
)
FINISHED = Ending(interrupted=False, complete=True, all_passed=True, delete_unused=False)


def _session(directory: Path, *, update: bool = True) -> SnapshotSession:
    return SnapshotSession(directory, update=update, pending=False, color=False, tool="t")


def test_an_interrupted_session_writes_nothing(tmp_path: Path) -> None:
    session = _session(tmp_path)
    session.assert_matches("a", DOCUMENT, "t.py::test_a")
    session.finish(Ending(interrupted=True, complete=False, all_passed=False, delete_unused=True))
    assert list(tmp_path.iterdir()) == []
    assert session.summary_lines() == ["interrupted: no snapshot written"]


def test_a_second_test_claiming_a_name_fails_naming_both(tmp_path: Path) -> None:
    session = _session(tmp_path)
    session.assert_matches("dup", DOCUMENT, "t.py::test_one")
    session.assert_matches("dup", DOCUMENT, "t.py::test_one")  # the same test again is fine
    with pytest.raises(SnapshotNameClash, match=r"t\.py::test_one and t\.py::test_two"):
        session.assert_matches("dup", DOCUMENT, "t.py::test_two")
    session.finish(FINISHED)
    assert list(tmp_path.iterdir()) == []


def test_worker_records_merge_into_one_writer(tmp_path: Path) -> None:
    first, second, controller = (_session(tmp_path) for _ in range(3))
    first.assert_matches("a", DOCUMENT, "t.py::test_a")
    second.assert_matches("b", DOCUMENT, "t.py::test_b")
    second.assert_matches("dup", DOCUMENT, "t.py::test_c")
    first.assert_matches("dup", DOCUMENT, "t.py::test_d")
    for worker in (first, second):
        controller.merge(worker.export())
    controller.finish(FINISHED)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.yaml", "b.yaml"]
    assert controller.summary_lines() == [
        "snapshot 'dup' claimed by t.py::test_d and t.py::test_c: not written",
        "2 created (a, b)",
    ]


def test_unused_snapshots_are_found_only_in_a_complete_run(tmp_path: Path) -> None:
    (tmp_path / "old.yaml").write_text("source:\n  tool: t\nthreads: {}\n")
    (tmp_path / "skipped.yaml").write_text("source:\n  tool: t\nthreads: {}\n")
    (tmp_path / "scenario.yaml").write_text("source:\n  tool: kvm-conformance scenario\n")
    session = _session(tmp_path, update=True)
    session.assert_matches("a", DOCUMENT, "t.py::test_a")
    session.finish(
        Ending(
            interrupted=False,
            complete=True,
            all_passed=False,
            delete_unused=True,
            not_run=frozenset({"skipped"}),
        )
    )
    assert session.summary_lines()[-1] == "1 unused (not deleted): old.yaml"


@pytest.mark.parametrize(
    ("nodeid", "name"),
    [
        ("tests/test_vmm.py::test_boot", "tests.test_vmm.test_boot"),
        (
            "tests/test_vmm.py::TestBoot::test_it[hello-1]",
            "tests.test_vmm.TestBoot.test_it[hello-1]",
        ),
        ("test_x.py::test_y[a/b c]", "test_x.test_y[a_b_c]"),
    ],
)
def test_default_names_come_from_the_node_id(nodeid: str, name: str) -> None:
    assert default_snapshot_name(nodeid) == name
    long = default_snapshot_name("t.py::test_" + "x" * 300)
    assert len(long) <= 200 and long != default_snapshot_name("t.py::test_" + "x" * 301)
