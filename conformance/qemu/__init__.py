"""QEMU's side: the command lines references are recorded from, and recording them."""
