"""The KVM kernel ABI: ctypes layouts, constants and the ioctl table, generated from linux/kvm.h.

`_generated` is written by tools/gen_abi.py; `ioctls` is the table the rest of the project reads;
`ioc` encodes and decodes ioctl request numbers. Nothing here imports the rest of the project.
"""
