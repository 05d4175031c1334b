"""Exit decoding from a kvm_run laid out by the generated ABI (a buffer stands in for the page)."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from typing import Any

import pytest

from conformance.abi import _generated as abi
from conformance.vmm.exit_decoder import ExitDecoder
from conformance.vmm.exits import (
    HltExit,
    HypervExit,
    InternalErrorExit,
    IoDirection,
    IoExit,
    MmioExit,
    SystemEventExit,
    UnknownExit,
    XenExit,
)

PAGE_SIZE = 4096
DATA_OFFSET = 0x1000


@pytest.fixture
def page() -> Iterator[tuple[Any, Any, ExitDecoder]]:
    buffer = (ctypes.c_uint8 * (2 * PAGE_SIZE))()
    run: Any = abi.kvm_run.from_buffer(buffer)
    decoder = ExitDecoder(ctypes.addressof(buffer), len(buffer))
    yield buffer, run, decoder
    decoder.release()


def test_io_out_carries_the_bytes_at_data_offset(page: tuple[Any, Any, ExitDecoder]) -> None:
    buffer, run, decoder = page
    run.exit_reason = abi.KVM_EXIT_IO
    run.io.direction, run.io.size, run.io.port = abi.KVM_EXIT_IO_OUT, 2, 0x3F8
    run.io.count, run.io.data_offset = 2, DATA_OFFSET
    buffer[DATA_OFFSET : DATA_OFFSET + 4] = (1, 2, 3, 4)
    exit_value = decoder.decode()
    assert exit_value == IoExit(IoDirection.OUT, 2, 0x3F8, 2, b"\x01\x02\x03\x04")
    assert decoder.decode() is exit_value  # identical exits are interned


def test_io_in_answer_lands_at_data_offset(page: tuple[Any, Any, ExitDecoder]) -> None:
    buffer, run, decoder = page
    run.exit_reason = abi.KVM_EXIT_IO
    run.io.direction, run.io.size, run.io.port = abi.KVM_EXIT_IO_IN, 1, 0x3FD
    run.io.count, run.io.data_offset = 1, DATA_OFFSET
    assert decoder.decode() == IoExit(IoDirection.IN, 1, 0x3FD, 1, b"")
    decoder.answer_io_in(b"\x60")
    assert buffer[DATA_OFFSET] == 0x60
    with pytest.raises(ValueError, match="needs 1 bytes"):
        decoder.answer_io_in(b"\x60\x60")


def test_mmio_write_and_read_answer(page: tuple[Any, Any, ExitDecoder]) -> None:
    _, run, decoder = page
    run.exit_reason = abi.KVM_EXIT_MMIO
    run.mmio.phys_addr, run.mmio.len, run.mmio.is_write = 0xB8000, 2, 1
    run.mmio.data[0], run.mmio.data[1] = ord("H"), 0x07
    assert decoder.decode() == MmioExit(0xB8000, 2, True, b"H\x07")
    run.mmio.is_write = 0
    assert decoder.decode() == MmioExit(0xB8000, 2, False, b"")
    decoder.answer_mmio_read(b"\xaa\xbb")
    assert bytes(run.mmio.data[:2]) == b"\xaa\xbb"


def test_payload_exits_read_their_union_member(page: tuple[Any, Any, ExitDecoder]) -> None:
    _, run, decoder = page
    run.exit_reason = abi.KVM_EXIT_INTERNAL_ERROR
    run.internal.suberror = abi.KVM_INTERNAL_ERROR_EMULATION
    run.internal.ndata = 2
    run.internal.data[0], run.internal.data[1] = 7, 9
    assert decoder.decode() == InternalErrorExit(abi.KVM_INTERNAL_ERROR_EMULATION, (7, 9))
    run.exit_reason = abi.KVM_EXIT_SYSTEM_EVENT
    run.system_event.type = abi.KVM_SYSTEM_EVENT_RESET
    run.system_event.ndata = 1
    run.system_event.data[0] = 5
    assert decoder.decode() == SystemEventExit(abi.KVM_SYSTEM_EVENT_RESET, (5,))
    run.exit_reason = abi.KVM_EXIT_HLT
    assert decoder.decode() == HltExit()


def test_reasons_without_a_type_decode_to_unknown_exit(page: tuple[Any, Any, ExitDecoder]) -> None:
    _, run, decoder = page
    run.exit_reason = abi.KVM_EXIT_S390_SIEIC
    assert decoder.decode() == UnknownExit(abi.KVM_EXIT_S390_SIEIC, "KVM_EXIT_S390_SIEIC")
    run.exit_reason = 1000
    assert decoder.decode() == UnknownExit(1000)


def test_hyperv_and_xen_exits_carry_their_type_and_union_bytes(
    page: tuple[Any, Any, ExitDecoder],
) -> None:
    _, run, decoder = page
    run.exit_reason = abi.KVM_EXIT_HYPERV
    run.hyperv.type = abi.KVM_EXIT_HYPERV_HCALL
    run.hyperv.u.hcall.input = 0x1234
    hyperv = decoder.decode()
    assert isinstance(hyperv, HypervExit)
    assert hyperv.type == abi.KVM_EXIT_HYPERV_HCALL
    assert hyperv.payload == bytes(run.hyperv.u)
    assert int.from_bytes(hyperv.payload[:8], "little") == 0x1234
    run.exit_reason = abi.KVM_EXIT_XEN
    run.xen.type = abi.KVM_EXIT_XEN_HCALL
    run.xen.u.hcall.input = 24
    xen = decoder.decode()
    assert isinstance(xen, XenExit)
    assert (xen.type, xen.payload) == (abi.KVM_EXIT_XEN_HCALL, bytes(run.xen.u))


def test_immediate_exit_flag_is_kvm_runs(page: tuple[Any, Any, ExitDecoder]) -> None:
    _, run, decoder = page
    decoder.immediate_exit = True
    assert run.immediate_exit == 1
    decoder.immediate_exit = False
    assert run.immediate_exit == 0
