"""Bad pointer arguments from decoding to documents: what the decoder reads of a struct that runs
into unreadable memory or has an absurd count (from the bytes a stop copied, as the compiled
loop serves them), and how the raw stream, the text and the normalized document write it."""

from __future__ import annotations

import ctypes
import io
import struct
from pathlib import Path

import pytest

from conformance.abi import _generated as abi
from conformance.abi.ioctls import by_name
from conformance.model import events
from conformance.normalize.raw_import import RawTraceError, import_raw_trace
from conformance.tracer import decode
from conformance.tracer.raw_yaml import RawYamlWriter, raw_entry
from conformance.tracer.stops import RecordedStop
from conformance.tracer.text import format_event

_ADDRESS = 0x7F0000001000


def _stop(data: bytes) -> RecordedStop:
    """A stop whose task has `data` at _ADDRESS and nothing readable after it."""
    return RecordedStop(1, 1, 16, (5, 0, _ADDRESS), 0, memory={_ADDRESS: data})


def test_a_struct_running_into_unreadable_memory_keeps_its_whole_fields() -> None:
    read = decode.read_inputs(by_name("KVM_SET_REGS"), _stop(struct.pack("<QQQ", 1, 2, 3)[:20]),
                              _ADDRESS, None)  # fmt: skip
    assert read == decode.ArgumentRead({"rax": 1, "rbx": 2}, readable=20)
    assert decode.read_inputs(by_name("KVM_SET_REGS"), _stop(b""), _ADDRESS, None) == (
        decode.ArgumentRead(None, readable=0)
    )


def test_entries_beyond_the_kernels_maximum_are_not_read() -> None:
    header = struct.pack("<II", 0xFFFFFFFF, 0)  # kvm_msrs: nmsrs, pad
    read = decode.read_inputs(by_name("KVM_SET_MSRS"), _stop(header), _ADDRESS, None)
    assert read == decode.ArgumentRead({"nmsrs": 0xFFFFFFFF, "pad": 0})
    assert by_name("KVM_SET_MSRS").max_count == 255
    assert by_name("KVM_SET_CPUID2").max_count == 256


def test_entries_running_into_unreadable_memory_keep_the_whole_ones() -> None:
    entry = ctypes.sizeof(abi.kvm_msr_entry)
    data = struct.pack("<II", 2, 0) + struct.pack("<IIQ", 0x174, 0, 0x10) + b"\0" * 8
    read = decode.read_inputs(by_name("KVM_SET_MSRS"), _stop(data), _ADDRESS, None)
    assert read.readable == 8 + entry + 8
    assert read.fields == {
        "nmsrs": 2, "pad": 0, "entries": [{"index": 0x174, "reserved": 0, "data": 0x10}]
    }  # fmt: skip


def test_a_nested_state_larger_than_the_kernel_reads_is_cut_to_it() -> None:
    spec = by_name("KVM_SET_NESTED_STATE")
    assert spec.max_count is not None
    header_size = ctypes.sizeof(abi.kvm_nested_state)
    header = struct.pack("<HHI", 0, 0, 0xFFFFFFF).ljust(header_size, b"\0")
    data = header + b"\x01" * (spec.max_count - header_size)
    read = decode.read_inputs(spec, _stop(data), _ADDRESS, None)
    assert read.readable is None and read.fields is not None
    tail = read.fields["data"]
    assert (
        isinstance(tail, bytes) and len(tail) == spec.max_count - abi.kvm_nested_state.data.offset
    )


def _ioctl(name: str, arg: int, readable: int | None, **fields: object) -> events.Ioctl:
    spec = by_name(name)
    return events.Ioctl(seq=3, tid=100, pid=100, ret=-14, errno=14, fd=5, fd_role="vcpu0",
                        request=spec.number, name=name, arg=arg, readable=readable,
                        **fields)  # type: ignore[arg-type]  # fmt: skip


def test_a_null_pointer_in_each_output() -> None:
    null = _ioctl("KVM_SET_CPUID2", 0, 0)
    assert format_event(null) == "ioctl(5<vcpu0>, KVM_SET_CPUID2, NULL) = -1 EFAULT (Bad address)"
    entry = raw_entry(null)
    assert (entry["arg"], entry["errno"]) == ("NULL", "EFAULT") and "readable" not in entry
    partial = _ioctl("KVM_SET_REGS", 0x7F0000000FF0, 16, inputs={"rax": 1, "rbx": 0x1000})
    assert format_event(partial).startswith("ioctl(5<vcpu0>, KVM_SET_REGS, 0x7f0000000ff0) = -1")
    entry = raw_entry(partial)
    assert entry["readable"] == 16 and repr(entry["readable"]) == "0x10"
    inputs = entry["in"]
    assert isinstance(inputs, dict) and inputs == {"rax": 1, "rbx": 0x1000}
    assert repr(inputs["rbx"]) == "0x1000"  # hex, as the normalized document writes a register


def test_the_raw_stream_reads_back_to_the_normalized_names(tmp_path: Path) -> None:
    output = io.StringIO()
    with RawYamlWriter(output, {"tool": "test"}) as writer:
        writer(events.TaskStarted(1, 100, 100, 0, "process"))
        writer(_ioctl("KVM_SET_CPUID2", 0, 0))
        writer(_ioctl("KVM_SET_REGS", 0x7F0000000FF0, 16, inputs={"rax": 1, "rbx": 2}))
        writer(_ioctl("KVM_GET_REGS", 0, None))
    document = import_raw_trace(output.getvalue(), tmp_path / "raw.yaml")
    [thread] = document.threads.values()
    calls = [call.entry for call in thread]
    assert calls == [
        {"call": "ioctl", "fd": "vcpu0", "req": "KVM_SET_CPUID2", "arg": "NULL", "errno": "EFAULT"},
        {"call": "ioctl", "fd": "vcpu0", "req": "KVM_SET_REGS", "arg": "unreadable",
         "in": {"rax": 1, "rbx": 2}, "errno": "EFAULT"},
        {"call": "ioctl", "fd": "vcpu0", "req": "KVM_GET_REGS", "arg": "NULL", "errno": "EFAULT"},
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("arg: foo", "`arg` must be an integer or NULL"),
        ("arg: 0, readable: [1]", "`readable` must be an integer"),
        ("arg: 0, errno: EBOGUS", "unknown errno 'EBOGUS'"),
        ("arg: 0, errno: [14]", "`errno` must be an errno name or number"),
    ],
)
def test_a_raw_call_with_a_bad_value_names_its_line(
    field: str, message: str, tmp_path: Path
) -> None:
    text = (
        "schema: kvm-conformance-raw/1\nsource: {tool: test}\nthreads:\n  '100':\n"
        f"    - {{call: ioctl, seq: 2, fd: 5, fd_role: vcpu0, req: KVM_GET_REGS, {field}}}\n"
    )
    with pytest.raises(RawTraceError, match=f"raw.yaml:5: {message}"):
        import_raw_trace(text, tmp_path / "raw.yaml")
