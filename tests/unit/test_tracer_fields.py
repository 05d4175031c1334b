"""The one-call decoder for flat structs gives exactly what the general field walk gives."""

from __future__ import annotations

import ctypes
import os

from conformance.abi import _generated as abi
from conformance.tracer import fields


def _structs() -> list[type[ctypes.Structure]]:
    return [
        value
        for value in vars(abi).values()
        if isinstance(value, type)
        and issubclass(value, ctypes.Structure)
        and value is not ctypes.Structure
    ]


def test_flat_structs_decode_as_the_general_walk_does() -> None:
    planned = 0
    for struct_type in _structs():
        raw = os.urandom(max(ctypes.sizeof(struct_type), 1))
        general = fields._decode_members(struct_type, memoryview(raw), 0)
        assert fields.decode(struct_type, raw) == general, struct_type.__name__
        planned += fields._flat_plan(struct_type) is not None
    assert planned > 50  # kvm_regs, kvm_run's io member, kvm_userspace_memory_region...


def test_kvm_run_io_member_takes_the_flat_path() -> None:
    assert fields._flat_plan(abi.kvm_run_anon0_io) is not None
    assert fields._flat_plan(abi.kvm_run_anon0_mmio) is not None  # data is a byte array
    assert fields._flat_plan(abi.kvm_msrs) is None  # a flexible array: the walk handles it
