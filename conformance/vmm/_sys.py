"""The one place the VMM core touches the kernel: /dev/kvm, ioctl, mmap and munmap.

Everything above this module sees typed results and ConformanceErrors; OSError never leaves it.

Why ctypes and not fcntl.ioctl: fcntl.ioctl retries a call interrupted by a signal (PEP 475)
unless the Python signal handler raises. A run timeout needs KVM_RUN to come back with EINTR so
the run loop can look at its deadline; a retried KVM_RUN with kvm_run.immediate_exit set would
spin forever. libc's ioctl through ctypes returns -1/EINTR as the kernel reported it (and on
this host costs less per call than fcntl.ioctl). mmap goes through libc too, because Python's
mmap module cannot map at a fixed address (MAP_FIXED) and does not expose the address KVM needs.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import mmap
import os
from collections.abc import Callable

from conformance.abi import _generated as abi
from conformance.abi.ioctls import IoctlSpec
from conformance.model.errors import GuestMemoryError, KvmError, KvmUnavailableError

KVM_DEVICE = "/dev/kvm"

_libc = ctypes.CDLL(None, use_errno=True)

_ioctl = _libc.ioctl
# Every KVM ioctl argument is an integer or a pointer; both travel in one 64-bit register.
_ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong)
_ioctl.restype = ctypes.c_int

# A second handle on the same libc ioctl, without argtypes, for the call made once per guest
# exit: argtypes convert every argument on every call, which costs about half of a ctypes call
# here (~470 against ~220 ns). Its arguments are converted once instead (see prepared_ioctl).
_ioctl_preconverted = _libc["ioctl"]
_ioctl_preconverted.restype = ctypes.c_int
_NO_ARGUMENT = ctypes.c_ulong(0)

_mmap = _libc.mmap
_mmap.argtypes = (
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
)
_mmap.restype = ctypes.c_void_p

_munmap = _libc.munmap
_munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_munmap.restype = ctypes.c_int

_MAP_FAILED = ctypes.c_void_p(-1).value

PAGE_SIZE = mmap.PAGESIZE
# The mmap module lacks PROT_NONE, and MAP_FIXED before Python 3.12: take them from the headers.
PROT_NONE: int = abi.PROT_NONE
MAP_FIXED: int = abi.MAP_FIXED


def open_kvm() -> int:
    """Open /dev/kvm read-write; a missing or forbidden device is KvmUnavailableError."""
    try:
        return os.open(KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KvmUnavailableError(f"{KVM_DEVICE} does not exist: KVM is not available") from None
    except PermissionError:
        raise KvmUnavailableError(
            f"{KVM_DEVICE} cannot be opened read-write: add this user to the kvm group"
        ) from None
    except OSError as error:
        raise KvmUnavailableError(f"{KVM_DEVICE} cannot be opened: {error.strerror}") from None


def close(fd: int) -> None:
    os.close(fd)


def ioctl(fd: int, spec: IoctlSpec, arg: int | ctypes.Structure | ctypes.c_uint64 = 0) -> int:
    """Issue one ioctl; the kernel's failure becomes KvmError(spec.name, errno)."""
    raw = arg if isinstance(arg, int) else ctypes.addressof(arg)
    result: int = _ioctl(fd, spec.number, raw)
    if result == -1:
        raise KvmError(spec.name, ctypes.get_errno())
    return result


def prepared_ioctl(fd: int, spec: IoctlSpec) -> Callable[[], int]:
    """ioctl(fd, spec, 0) as a callable with its arguments converted once, for KVM_RUN's loop.

    It returns the kernel's result as is, so that no Python frame or exception sits on the
    per-exit path: on -1, last_error(spec) is the KvmError that ioctl() would have raised.
    """
    # fd travels as a C int, ctypes' default for a Python int; request and argument are the
    # unsigned longs of ioctl's prototype.
    return functools.partial(_ioctl_preconverted, fd, ctypes.c_ulong(spec.number), _NO_ARGUMENT)


def last_error(spec: IoctlSpec) -> KvmError:
    """The failure of the prepared_ioctl(…, spec) call that just returned -1."""
    return KvmError(spec.name, ctypes.get_errno())


def map_anonymous(size: int, *, readable_writable: bool = True, at: int | None = None) -> int:
    """A private anonymous mapping; PROT_NONE when only reserving, MAP_FIXED when `at` is given."""
    prot = mmap.PROT_READ | mmap.PROT_WRITE if readable_writable else PROT_NONE
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    if at is not None:
        flags |= MAP_FIXED
    return _checked_mmap(size, prot, flags, at=at, what="anonymous mapping")


def map_shared(fd: int, size: int) -> int:
    """A shared read-write mapping of an fd's first `size` bytes (the vCPU's kvm_run page)."""
    prot = mmap.PROT_READ | mmap.PROT_WRITE
    return _checked_mmap(size, prot, mmap.MAP_SHARED, fd=fd, what="kvm_run mapping")


def unmap(address: int, size: int) -> None:
    if _munmap(address, size) == -1:
        error = ctypes.get_errno()
        raise GuestMemoryError(f"munmap({address:#x}, {size:#x}) failed: {os.strerror(error)}")


def _checked_mmap(
    size: int, prot: int, flags: int, *, fd: int = -1, at: int | None = None, what: str
) -> int:
    address = _mmap(at, size, prot, flags, fd, 0)
    if address is None or address == _MAP_FAILED:
        error = ctypes.get_errno()
        raise GuestMemoryError(f"{what} of {size:#x} bytes failed: {errno.errorcode.get(error)}")
    return int(address)
