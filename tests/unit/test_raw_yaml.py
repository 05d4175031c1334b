"""The raw YAML stream and the flow formatter's fast path: the same bytes as yaml.dump writes."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conformance.model import events, flow_yaml
from conformance.model.document import Entry, Hex, Value
from conformance.model.flow_yaml import _dumped, format_call, format_value
from conformance.tracer.raw_yaml import RawYamlWriter, raw_entry

# Strings YAML reads as something else, or that need quoting in flow context, beside any text.
_AWKWARD = ["", "yes", "No", "null", "~", "0x10", "1e3", ".inf", "-", "a: b", "a,b", "[x]", "{",
            "#c", "a #c", "'", '"', "?x", "? x", ":x", "&a", "*a", "!t", "%", "@", "`", "|", ">",
            " lead", "trail ", "a\nb", "a\u2028b", "x\x85y", "\t", "\r", "\ufeff", "é", "KVM_RUN",
            "vcpu0", "a" * 130]  # fmt: skip
_TEXT = st.sampled_from(_AWKWARD) | st.text(max_size=12)
_INT = st.integers(min_value=-(1 << 70), max_value=1 << 70)
_SCALAR = _TEXT | _INT | _INT.map(Hex) | st.booleans()
_VALUE = st.recursive(
    _SCALAR,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400)
@given(_VALUE)
def test_format_value_equals_yaml_dump(value: Value) -> None:
    assert format_value(value) == _dumped(value)


@pytest.mark.parametrize("text", _AWKWARD)
def test_a_string_is_written_alike_at_every_depth(text: str) -> None:
    # The fast path learns a string's text once and reuses it wherever the string appears.
    values: list[Value] = [[text], {"k": text}, {"k": [[text]]}, {text: 1}, {"k": {text: [text]}}]
    for value in values:
        assert format_value(value) == _dumped(value)


@given(st.dictionaries(_TEXT, _VALUE, max_size=6))
def test_format_call_equals_yaml_dump(entry: Entry) -> None:
    assert format_call(entry) == _dumped(flow_yaml.FlowMapping(entry))


def test_containers_met_twice_are_written_twice_without_anchors() -> None:
    shared: list[Value] = [1]
    assert format_value([shared, shared]) == _dumped([shared, shared]) == "[[1], [1]]"


def test_rendering_survives_the_cache_being_cleared(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flow_yaml, "_CACHE_LIMIT", 3)
    values: list[Value] = [{f"k{i}": [f"v{i}", "yes", Hex(i)]} for i in range(20)]
    assert format_value(values) == _dumped(values)
    assert len(flow_yaml._ITEM_TEXTS) <= 3


_FIELDS: st.SearchStrategy[events.Fields] = st.dictionaries(
    st.sampled_from(["exit_reason", "addr", "flags", "data", "io", "entries", "len", "é"]),
    st.recursive(
        _INT | st.binary(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
        max_leaves=8,
    ),
    max_size=5,
)
_IOCTL = st.builds(
    events.Ioctl,
    seq=st.integers(0, 1 << 20),
    tid=st.sampled_from([100, 101]),
    pid=st.just(100),
    ret=_INT,
    errno=st.none() | st.integers(1, 133),
    fd=st.integers(-1, 64),
    fd_role=st.sampled_from(["kvm", "vm", "vcpu0"]),
    request=st.integers(0, (1 << 32) - 1),
    name=st.none() | st.sampled_from(["KVM_RUN", "KVM_GET_REGS"]),
    arg=st.integers(0, 1 << 64),
    inputs=st.none() | _FIELDS,
    outputs=st.none() | _FIELDS,
    new_fd_role=st.none() | st.just("vcpu1"),
    run_exit=st.none() | _FIELDS,
    run_entry=st.none() | _FIELDS,
)
_OTHER = [
    events.OpenKvm(1, 100, 100, 3, None, "/dev/kvm", 0o2000002),
    events.Mmap(2, 100, 100, 0x7F0000000000, None, 0, 0x3000, 3, 1, 5, "vcpu0", 0),
    events.Mremap(3, 101, 100, -1, 12, 0x1000, 0x1000, 0x2000, 1, 0x2000),
    events.Madvise(4, 100, 100, 0, None, 0x1000, 0x1000, 4),
    events.DupFd(5, 100, 100, 7, None, "fcntl", 5, "vm"),
    events.CloseFd(6, 100, 100, 0, None, 7, "vm"),
    events.EventFd(7, 100, 100, 8, None, 0, 0x80000),
    events.TaskStarted(8, 101, 100, 100, "thread"),
    events.TaskExited(9, 101, 100, -9),
    events.KvmRunSummary(10, 101, 100, "vcpu0", {"exits": 100000, "io_exits": 7}),
]


@given(st.lists(_IOCTL | st.sampled_from(_OTHER), max_size=8))
def test_raw_stream_is_each_entry_dumped_by_yaml(stream: list[events.Event]) -> None:
    output = io.StringIO()
    with RawYamlWriter(output, {"tool": "test", "argv": ["a b", "yes"]}) as writer:
        for event in stream:
            writer(event)
    expected = "schema: kvm-conformance-raw/1\nsource: {tool: test, argv: [a b, 'yes']}\n"
    expected += "threads:\n" if stream else "threads: {}\n"
    for tid in sorted({event.tid for event in stream}):
        expected += f"  '{tid}':\n"
        for event in stream:
            if event.tid == tid:
                expected += f"    - {_dumped(flow_yaml.FlowMapping(raw_entry(event)))}\n"
    assert output.getvalue() == expected


def _run(seq: int, tid: int, run_exit: events.Fields, errno: int | None = None) -> events.Ioctl:
    return events.Ioctl(seq, tid, 100, 0, errno, 5, "vcpu0", 0xAE80, "KVM_RUN", 0,
                        run_exit=run_exit)  # fmt: skip


def test_repeated_kvm_runs_are_written_as_each_alone() -> None:
    # A KVM_RUN equal to its thread's last but for seq reuses that one's text: any difference,
    # the order of a mapping's keys included, must still show.
    io_exit: events.Fields = {"exit_reason": 2, "io": {"port": 128, "data": b"\0"}}
    reordered: events.Fields = {"io": {"data": b"\0", "port": 128}, "exit_reason": 2}
    stream = [_run(1, 100, io_exit), _run(2, 101, io_exit), _run(3, 100, dict(io_exit)),
              _run(4, 100, reordered), _run(5, 100, reordered, errno=4), _run(6, 101, io_exit),
              _run(7, 100, {"exit_reason": 2, "io": {"port": 128, "data": b"\1"}})]  # fmt: skip
    output = io.StringIO()
    with RawYamlWriter(output, {}) as writer:
        for event in stream:
            writer(event)
    lines = output.getvalue().splitlines()
    body = [line for line in lines if line.startswith("    - ")]
    by_thread = sorted(stream, key=lambda event: event.tid)
    assert body == [f"    - {_dumped(flow_yaml.FlowMapping(raw_entry(e)))}" for e in by_thread]
