"""Buffers for KVM's variable-length structs (kvm_cpuid2, kvm_msrs, kvm_msr_list).

The generated header struct ends in a zero-length flexible array; the kernel reads or writes
`count` entries right after it. A subclass that appends an array of `count` entries lays the
buffer out exactly so, and keeps the header's fields addressable by their C names.
"""

from __future__ import annotations

from typing import Any

from conformance.abi.ioctls import IoctlSpec


def sized_argument(spec: IoctlSpec, entry: type[Any], count: int) -> Any:
    """A zeroed argument for a VARIABLE ioctl with room for `count` entries, at `.items`.

    The count field is set to `count`; callers fill `.items` (or read them back).
    """
    header = spec.struct
    if header is None or spec.count_field is None or spec.entries_field is None:
        raise TypeError(f"{spec.name} does not take a variable-length argument")
    layout: Any = type(
        f"{header.__name__}_{count}", (header,), {"_fields_": [("items", entry * count)]}
    )
    # The appended array must start where the header's flexible array does.
    if layout.items.offset != getattr(header, spec.entries_field).offset:
        raise TypeError(f"{header.__name__}: entries do not follow the header directly")
    buffer = layout()
    setattr(buffer, spec.count_field, count)
    return buffer
