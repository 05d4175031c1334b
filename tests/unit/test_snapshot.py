"""Snapshot files: deterministic dumps, strict loads naming file:line, atomic writes, the store."""

from __future__ import annotations

import errno
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conformance.model.document import Hex, TraceCall, TraceDocument, Value
from conformance.model.errors import ConformanceError
from conformance.model.flow_yaml import format_call
from conformance.snapshot import store as store_module
from conformance.snapshot.store import (
    SnapshotError,
    SnapshotOverwriteError,
    SnapshotStore,
    dump_document,
    load_document,
    read_document,
    running_on_ci,
    write_document,
)

SAMPLE = """\
schema: kvm-conformance/2
source:
  scenario: memory-setup
  tool: kvm-conformance-vmm
threads:
  main:
  - {call: open, path: /dev/kvm, flags: [O_RDWR, O_CLOEXEC], ret: kvm}
  - {call: ioctl, fd: kvm, req: KVM_GET_API_VERSION, out: {ret: 12}}
  - {call: ioctl, fd: kvm, req: KVM_CREATE_VM, arg: 0, ret: vm}
  - {call: mmap, len: 0x40000, prot: [PROT_READ, PROT_WRITE], flags: [MAP_PRIVATE, MAP_ANONYMOUS], ret: ram0}
  - {call: ioctl, fd: vm, req: KVM_SET_USER_MEMORY_REGION, in: {slot: 0, flags: [], guest_phys_addr: 0x0, memory_size: 0x40000, userspace_addr: ram0+0x0}}
  vcpu0:
  - {call: ioctl, fd: vm, req: KVM_CREATE_VCPU, arg: 0, ret: vcpu0}
  - {call: mmap, len: 0x3000, prot: [PROT_READ, PROT_WRITE], flags: [MAP_SHARED], fd: vcpu0, offset: 0x0, ret: 'kvm_run:vcpu0'}
  - call: ioctl
    fd: vcpu0
    req: KVM_SET_MSRS
    in:
      nmsrs: 2
      entries:
      - {index: 0x174, reserved: 0x0, data: 0x0}
      - {index: 0xc0000080, reserved: 0x0, data: 0x500}
    out: {ret: 2}
  - {call: ioctl, fd: vcpu0, req: KVM_RUN, exit: {reason: KVM_EXIT_IO, direction: out, size: 1, port: 0x3f8, count: 1, data: [0x48]}, repeat: 3}
  - {call: ioctl, fd: vcpu0, req: KVM_RUN, exit: {reason: KVM_EXIT_HLT}}
"""  # noqa: E501 - a dump byte for byte: a call is one line up to 200 columns


def load(text: str) -> TraceDocument:
    return load_document(text, "expected/memory-setup.yaml")


def error_of(text: str) -> SnapshotError:
    with pytest.raises(SnapshotError) as caught:
        load(text)
    return caught.value


def test_a_snapshot_round_trips_byte_for_byte() -> None:
    document = load(SAMPLE)
    assert dump_document(document) == SAMPLE
    assert list(document.threads) == ["main", "vcpu0"]
    region = document.threads["main"][4]
    assert region.line == 11 and region.name == "KVM_SET_USER_MEMORY_REGION"
    msrs = document.threads["vcpu0"][2]
    assert msrs.line == 15 and msrs.name == "KVM_SET_MSRS"
    assert isinstance(region.entry["in"], dict)
    assert type(region.entry["in"]["memory_size"]) is Hex
    assert type(region.entry["in"]["slot"]) is int
    assert document.threads["vcpu0"][3].repeat == 3


def test_dump_orders_threads_main_then_vcpus_numerically_and_sorts_source() -> None:
    calls = [TraceCall({"call": "ioctl", "fd": "vcpu0", "req": "KVM_RUN"})]
    document = TraceDocument(
        source={"tool": "x", "argv": ["a"], "host": {"kernel": "6.18", "cpu": "c"}},
        threads={"vcpu10": calls, "thread:vm": calls, "vcpu2": calls, "main": calls},
    )
    text = dump_document(document)
    assert text.index("vcpu2:") < text.index("vcpu10:") < text.index("thread:vm")
    assert text.index("main:") < text.index("vcpu2:")
    assert text.index("argv") < text.index("host") < text.index("tool")
    assert text.index("cpu") < text.index("kernel")


def test_strings_that_look_like_numbers_stay_strings() -> None:
    call = TraceCall({"call": "open", "path": "0x10", "flags": ["O_RDWR"]})
    source: dict[str, Value] = {"words": ["yes", "1:20", "null", "0777", "1_000", "+5", "1e3"]}
    text = dump_document(TraceDocument(source, {"main": [call]}))
    loaded = load(text)
    assert loaded.threads["main"][0].entry == call.entry
    assert loaded.source == source


def test_format_call_is_one_line() -> None:
    entry = load(SAMPLE).threads["main"][4].entry
    line = format_call(entry)
    assert "\n" not in line
    assert line.startswith("{call: ioctl, fd: vm, req: KVM_SET_USER_MEMORY_REGION, in: {slot: 0,")


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("", 1, "empty file"),
        ("schema: kvm-conformance/3\nsource: {}\nthreads: {}\n", 1, "newer kvm-conformance"),
        ("schema: other/1\nsource: {}\nthreads: {}\n", 1, "expected 'schema: kvm-conformance/2'"),
        ("schema: kvm-conformance/2\nsource: {}\n", 1, "missing top-level key 'threads'"),
        ("schema: kvm-conformance/2\nsource: {}\nthreads: {}\nextra: 1\n", 4, "unknown top-level"),
        (
            "schema: kvm-conformance/2\nsource: {}\nthreads:\n  main: {call: x}\n",
            4,
            "thread 'main': expected a list",
        ),
        ("schema: kvm-conformance/2\nsource: {}\nthreads:\n  main:\n  - {fd: vm}\n", 5, "'call:"),
        (
            "schema: kvm-conformance/2\nsource: {}\nthreads:\n  main:\n  - {call: ioctl}\n",
            5,
            "'fd'",
        ),
        (
            "schema: kvm-conformance/2\nsource: {}\nthreads:\n  main:\n  - {call: open, in: 3}\n",
            5,
            "main[0] in: expected a mapping",
        ),
        (
            "schema: kvm-conformance/2\nsource: {}\nthreads:\n  m:\n  - {call: open, repeat: 0}\n",
            5,
            "m[0] repeat: expected a positive integer, found 0",
        ),
        (
            "schema: kvm-conformance/2\nsource: {}\nthreads:\n  m:\n  - {call: x, arg: 1.5}\n",
            5,
            "unsupported value",
        ),
        (
            "schema: kvm-conformance/2\nsource: {}\nthreads:\n  m:\n  - {call: x, arg: null}\n",
            5,
            "unsupported value",
        ),
        (
            "schema: kvm-conformance/2\nsource: {}\nthreads:\n  m:\n  - {call: x, call: y}\n",
            5,
            "duplicate key",
        ),
        ("schema: kvm-conformance/2\nsource: {a: &x 1, b: *x}\nthreads: {}\n", 2, "anchors"),
        ("schema: kvm-conformance/2\nsource: {a: 1, b: *x}\nthreads: {}\n", 2, "aliases"),
        (
            "schema: kvm-conformance/2\nsource: !!python/name:os.system x\nthreads: {}\n",
            2,
            "YAML tags (tag:yaml.org,2002:python/name:os.system) are not allowed",
        ),
        ("schema: kvm-conformance/2\nsource: {}\nthreads:\n  m: [\n", 5, "malformed YAML"),
        ("schema: kvm-conformance/2\nsource: {a: 0b_}\nthreads: {}\n", 2, "malformed integer"),
        ("schema: kvm-conformance/2\nsource: {}\nthreads:\n\x07\n", 4, "0x0007 is not allowed"),
        (
            "schema: kvm-conformance/2\nsource: " + "[" * 40 + "]" * 40 + "\nthreads: {}\n",
            2,
            "nested deeper",
        ),
    ],
)
def test_malformed_files_name_file_line_and_expectation(text: str, line: int, words: str) -> None:
    error = error_of(text)
    assert error.line == line
    assert words in error.message
    assert str(error).startswith(f"expected/memory-setup.yaml:{line}: ")


def test_non_utf8_file_is_reported_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"schema: kvm-conformance/2\nsource: {a: \xff}\n")
    with pytest.raises(SnapshotError) as caught:
        read_document(path)
    assert (caught.value.path, caught.value.line) == (path, 2)


def test_write_is_atomic_and_readable(tmp_path: Path) -> None:
    path = tmp_path / "memory-setup.yaml"
    write_document(path, load(SAMPLE))
    assert path.read_text() == SAMPLE
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["memory-setup.yaml"]


def test_failed_write_leaves_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "memory-setup.yaml"
    path.write_text("old")

    def disk_error(descriptor: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", disk_error)
    with pytest.raises(SnapshotError, match="cannot write: Input/output error"):
        write_document(path, load(SAMPLE))
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["memory-setup.yaml"]


def test_store_creates_keeps_refuses_and_updates(tmp_path: Path) -> None:
    document = load(SAMPLE)
    changed = load(SAMPLE.replace("guest_phys_addr: 0x0", "guest_phys_addr: 0x1000"))
    (tmp_path / "forgotten.yaml").write_text(SAMPLE)
    store = SnapshotStore(tmp_path)
    assert store.load("memory-setup") is None
    assert store.stage("memory-setup", document) == "created"
    assert not (tmp_path / "memory-setup.yaml").exists()  # staged: written by commit()
    store.commit()
    assert store.stage("memory-setup", document) == "unchanged"
    with pytest.raises(SnapshotOverwriteError, match="updating it was not asked for"):
        store.stage("memory-setup", changed)
    store.commit()
    assert (tmp_path / "memory-setup.yaml").read_text() == SAMPLE
    updating = SnapshotStore(tmp_path, update=True)
    assert updating.stage("memory-setup", changed) == "updated"
    updating.commit()
    loaded = updating.load("memory-setup")
    assert loaded is not None and dump_document(loaded) == dump_document(changed)
    report = store.report()
    assert (report.created, report.unchanged, report.unused) == (
        ["memory-setup"],
        ["memory-setup"],
        ["forgotten"],
    )
    with pytest.raises(SnapshotError, match="not a valid snapshot name"):
        store.path_for("../escape")


# -- fuzzing: whatever the bytes, the loader answers with a SnapshotError naming file and line --

_TOKENS = st.sampled_from(
    [
        ": ",
        "- ",
        "{",
        "}",
        "[",
        "]",
        ",",
        "*a",
        "&a ",
        "!!python/object:os.system ",
        "!x ",
        "0x",
        "0b_",
        "? ",
        "|",
        ">",
        "'",
        '"',
        "#",
        "\t",
        "\x00",
        "\x85",
        "~",
        "null",
        "1.5",
        "2026-13-45",
        "<<: ",
        "---\n",
        "...\n",
        "%YAML 1.1\n",
        "  ",
        "\n",
        "\ufeff",
        "\U0001f600",
    ]
)


def assert_reported_well(text: str) -> None:
    try:
        document = load(text)
    except SnapshotError as error:
        assert error.path == Path("expected/memory-setup.yaml")
        # YAML breaks lines at \n, \r, NEL, LS and PS too, as str.splitlines does.
        assert error.line is not None and 1 <= error.line <= len(text.splitlines()) + 2, error
        return
    dump_document(document)  # whatever loads can be written back


@settings(max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_TOKENS, st.text(max_size=8)), max_size=40))
def test_fuzz_malformed_yaml_raises_only_snapshot_errors(pieces: list[str]) -> None:
    assert_reported_well("".join(pieces))


def test_snapshot_errors_are_conformance_errors() -> None:
    assert issubclass(SnapshotError, ConformanceError)
    assert issubclass(SnapshotOverwriteError, ConformanceError)


def test_the_documented_example_is_a_snapshot_as_written() -> None:
    text = (Path(__file__).parents[2] / "docs" / "trace-format.md").read_text()
    example = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert dump_document(load(example)) == example


def test_a_store_writes_only_at_commit_and_pending_snapshots_beside(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, update=True)
    store.stage_pending("b", SAMPLE)
    assert store.stage("a", load(SAMPLE)) == "created"
    assert list(tmp_path.iterdir()) == []
    store.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.yaml", "b.yaml.new"]
    assert store.pending() == ["b"] and store.report().pending == ["b"]
    store.accept_pending("b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.yaml", "b.yaml"]
    store.stage_pending("a", SAMPLE.replace("0x0", "0x1000"))
    store.commit()
    store.reject_pending("a")
    assert (tmp_path / "a.yaml").read_text() == SAMPLE and store.pending() == []


def test_a_signal_during_a_commit_comes_after_every_file_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SnapshotStore(tmp_path, update=True)
    for name in ("a", "b", "c"):
        store.stage(name, load(SAMPLE))
    written: list[str] = []
    original = store_module._write_atomically

    def interrupting(path: Path, data: bytes) -> None:
        if not written:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the first file is written
        original(path, data)
        written.append(path.name)

    monkeypatch.setattr(store_module, "_write_atomically", interrupting)
    with pytest.raises(KeyboardInterrupt):
        store.commit()
    assert written == ["a.yaml", "b.yaml", "c.yaml"]


def test_a_signal_waiting_when_a_commit_starts_cancels_it(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, update=True)
    store.stage("a", load(SAMPLE))
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        os.kill(os.getpid(), signal.SIGINT)
        store.commit()
        assert list(tmp_path.iterdir()) == []
        with pytest.raises(KeyboardInterrupt):
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@pytest.mark.parametrize(
    ("value", "on_ci"), [("true", True), ("1", True), ("", False), ("false", False)]
)
def test_ci_is_what_ci_services_set(value: str, on_ci: bool) -> None:
    assert running_on_ci({"CI": value}) is on_ci
    assert running_on_ci({}) is False


_WRITER = """
import sys
from pathlib import Path
from conformance.snapshot.store import load_document, write_document
document = load_document(Path(sys.argv[2]).read_text(), sys.argv[2])
print("ready", flush=True)
while True:
    write_document(Path(sys.argv[1]), document)
"""


def test_a_writer_killed_mid_write_leaves_nothing_git_or_a_later_run_sees(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kill -9 at random points of a write loop (9 of 10 tries left `.NAME.yaml.XXXX.tmp`
    files before): git status stays clean, the snapshot stays whole, and the next write
    removes what was left."""
    source = Path(__file__).resolve().parents[2] / "expected" / "hello.yaml"
    snapshot = tmp_path / "hello.yaml"
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    write_document(snapshot, read_document(source))
    chooser = random.Random(19)
    for _ in range(10):
        writer = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(snapshot), str(source)], stdout=subprocess.PIPE
        )
        assert writer.stdout is not None and writer.stdout.readline() == b"ready\n"
        time.sleep(chooser.uniform(0.0, 0.2))
        writer.kill()
        writer.wait()
    status = subprocess.run(
        ["git", "-C", str(tmp_path), "status", "--porcelain"],
        check=True,
        capture_output=True,
        text=True,
    )
    assert status.stdout.split() == ["??", "hello.yaml"]
    assert read_document(snapshot).threads == read_document(source).threads
    monkeypatch.setattr(store_module, "_LEFT_BEHIND_AFTER", 0.0)
    write_document(snapshot, read_document(source))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".git", "hello.yaml"]
