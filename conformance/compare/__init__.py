"""Two documents -> their differences: regression (equal to a snapshot), conformance (fits inside
QEMU's reference, as its allowances permit), keyed sets, alignment, memory layout, host answers."""
