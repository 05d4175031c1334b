"""_IOC encode/decode round trips, and agreement with every number the headers define."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conformance.abi import _generated, ioc

directions = st.integers(0, (1 << ioc.DIRECTION_BITS) - 1)
types = st.integers(0, (1 << ioc.TYPE_BITS) - 1)
nrs = st.integers(0, (1 << ioc.NR_BITS) - 1)
sizes = st.integers(0, (1 << ioc.SIZE_BITS) - 1)


@given(directions, types, nrs, sizes)
def test_decode_inverts_encode(direction: int, ioctl_type: int, nr: int, size: int) -> None:
    fields = ioc.decode(ioc.encode(direction, ioctl_type, nr, size))
    assert fields == ioc.IocFields(direction, ioctl_type, nr, size)


@given(st.integers(0, (1 << 32) - 1))
def test_encode_inverts_decode(number: int) -> None:
    fields = ioc.decode(number)
    assert ioc.encode(fields.direction, fields.type, fields.nr, fields.size) == number


@given(st.one_of(st.integers(max_value=-1), st.integers(min_value=1 << ioc.SIZE_BITS)))
def test_encode_rejects_a_size_that_does_not_fit(size: int) -> None:
    with pytest.raises(ValueError, match="size"):
        ioc.encode(ioc.IOC_READ, _generated.KVMIO, 0, size)


@pytest.mark.parametrize("number", [-1, 1 << 32])
def test_decode_rejects_numbers_wider_than_32_bits(number: int) -> None:
    with pytest.raises(ValueError, match="number"):
        ioc.decode(number)


def test_every_kvm_number_is_an_ioc_number_of_type_kvmio() -> None:
    for name, number in _generated.IOCTL_NUMBERS.items():
        fields = ioc.decode(number)
        assert fields.type == _generated.KVMIO, name
        assert ioc.encode(fields.direction, fields.type, fields.nr, fields.size) == number


def test_kvm_run_is_io_kvmio_0x80() -> None:
    assert _generated.IOCTL_NUMBERS["KVM_RUN"] == ioc.encode(
        ioc.IOC_NONE, _generated.KVMIO, 0x80, 0
    )
