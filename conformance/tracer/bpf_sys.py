"""The kernel's eBPF facility, for the tracer: bpf(2) (maps, programs, raw tracepoints) and a BPF
ring buffer's shared pages. The only module that touches them (as seccomp.py is for seccomp);
ctypes over the C library, no libbpf.

Programs attach to raw tracepoints (BPF_RAW_TRACEPOINT_OPEN), not through perf_event_open(2):
closing a perf event on a tracepoint waits for RCU grace periods, 55-85 ms each here (two of
them doubled a short trace's time), while a raw tracepoint's fd closes in ~0.1 ms; and a raw
tracepoint hands the program the tracepoint's arguments without building a perf record.

Every failure is an OSError carrying the errno, with the verifier's log for a refused program.
The constants and struct offsets below are the kernel's ABI from the headers named beside them;
tests/unit/test_bpf_sys.py checks them against the installed headers when gcc is present.
"""

from __future__ import annotations

import ctypes
import errno as errno_codes
import mmap
import os
import struct

# <asm/unistd_64.h>
_NR_BPF = 321
# <linux/bpf.h>: enum bpf_cmd, enum bpf_map_type, enum bpf_prog_type, map flags
_BPF_MAP_CREATE, _BPF_MAP_LOOKUP_ELEM, _BPF_MAP_UPDATE_ELEM, _BPF_MAP_DELETE_ELEM = 0, 1, 2, 3
_BPF_PROG_LOAD = 5
_BPF_PROG_TEST_RUN = 10
_BPF_RAW_TRACEPOINT_OPEN = 17
MAP_HASH, MAP_ARRAY, MAP_PERCPU_ARRAY, MAP_RINGBUF = 1, 2, 6, 27
PROG_SOCKET_FILTER, PROG_RAW_TRACEPOINT = 1, 17
NO_PREALLOC = 1  # BPF_F_NO_PREALLOC: hash entries allocated when added
_ATTR_SIZE = 144  # sizeof(union bpf_attr) in 6.1's header; the kernel accepts any it knows
_OBJECT_NAME_SIZE = 16  # BPF_OBJ_NAME_LEN
# union bpf_attr, BPF_MAP_CREATE: map_type, key_size, value_size, max_entries, map_flags
_MAP_CREATE = struct.Struct("<IIIII")
_MAP_NAME_OFFSET = 28
# union bpf_attr, BPF_MAP_*_ELEM: map_fd, (pad), key, value, flags
_MAP_ELEMENT = struct.Struct("<I4xQQQ")
# union bpf_attr, BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, log_level, log_size,
# log_buf, kern_version, prog_flags
_PROG_LOAD = struct.Struct("<IIQQIIQII")
_PROG_NAME_OFFSET = 48
# union bpf_attr, BPF_PROG_TEST_RUN: prog_fd, retval, data_size_in, data_size_out, data_in
_TEST_RUN = struct.Struct("<IIIIQ")
# union bpf_attr, BPF_RAW_TRACEPOINT_OPEN: name, prog_fd
_RAW_TRACEPOINT_OPEN = struct.Struct("<QI")
_INSTRUCTION_SIZE = 8
_VERIFIER_LOG_SIZE = 1 << 20
# A ring buffer's records: u32 length (BPF_RINGBUF_BUSY_BIT, _DISCARD_BIT), u32 page offset
RINGBUF_HEADER_SIZE = 8
_RINGBUF_BUSY = 1 << 31
_RINGBUF_DISCARD = 1 << 30

_PAGE_SIZE = mmap.PAGESIZE
_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def _call(number: int, *args: object) -> int:
    result = _syscall(ctypes.c_long(number), *args)
    if result < 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))
    return int(result)


def _bpf(command: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    return _call(_NR_BPF, ctypes.c_int(command), attr, ctypes.c_uint(len(attr)))


def _named(attr: ctypes.Array[ctypes.c_char], offset: int, name: str) -> None:
    encoded = name.encode("ascii")[: _OBJECT_NAME_SIZE - 1]
    ctypes.memmove(ctypes.addressof(attr) + offset, encoded, len(encoded))


def create_map(
    map_type: int,
    key_size: int,
    value_size: int,
    max_entries: int,
    *,
    flags: int = 0,
    name: str = "",
) -> int:
    """A new map's fd (close-on-exec, as every bpf fd)."""
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    _MAP_CREATE.pack_into(attr, 0, map_type, key_size, value_size, max_entries, flags)
    _named(attr, _MAP_NAME_OFFSET, name)
    return _bpf(_BPF_MAP_CREATE, attr)


def _element(
    command: int, map_fd: int, key: bytes, value: ctypes.Array[ctypes.c_char] | None, flags: int = 0
) -> None:
    key_buffer = ctypes.create_string_buffer(key, len(key))
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    value_address = ctypes.addressof(value) if value is not None else 0
    _MAP_ELEMENT.pack_into(attr, 0, map_fd, ctypes.addressof(key_buffer), value_address, flags)
    _bpf(command, attr)


def lookup(map_fd: int, key: bytes, value_size: int) -> bytes | None:
    """The value under `key`, or None when there is none."""
    value = ctypes.create_string_buffer(value_size)
    return value.raw if lookup_into(map_fd, key, value) else None


def lookup_into(map_fd: int, key: bytes, value: ctypes.Array[ctypes.c_char]) -> bool:
    """Copy the value under `key` into `value` (a buffer of the map's value size, reused by a
    caller that looks up often); False when there is none."""
    try:
        _element(_BPF_MAP_LOOKUP_ELEM, map_fd, key, value)
    except FileNotFoundError:
        return False
    return True


def update(map_fd: int, key: bytes, value: bytes) -> None:
    """Set (add or replace) the value under `key`."""
    _element(_BPF_MAP_UPDATE_ELEM, map_fd, key, ctypes.create_string_buffer(value, len(value)))


def delete(map_fd: int, key: bytes) -> None:
    """Remove `key`; a key that is not there is no error."""
    try:
        _element(_BPF_MAP_DELETE_ELEM, map_fd, key, None)
    except FileNotFoundError:
        return


def load_program(
    prog_type: int, instructions: bytes, *, name: str = "", license: str = "Dual MIT/GPL"
) -> int:
    """A verified program's fd. A refusal raises OSError whose message ends with the verifier's
    log (its last lines say why). `license`: the helpers used are GPL-only; the kernel takes
    "Dual MIT/GPL" as compatible."""
    code = ctypes.create_string_buffer(instructions, len(instructions))
    license_text = ctypes.create_string_buffer(license.encode("ascii"))
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    count = len(instructions) // _INSTRUCTION_SIZE

    def load(log: ctypes.Array[ctypes.c_char] | None) -> int:
        log_level, log_size, log_address = (0, 0, 0)
        if log is not None:
            log_level, log_size, log_address = 1, len(log), ctypes.addressof(log)
        program = (prog_type, count, ctypes.addressof(code), ctypes.addressof(license_text))
        _PROG_LOAD.pack_into(attr, 0, *program, log_level, log_size, log_address, 0, 0)
        _named(attr, _PROG_NAME_OFFSET, name)
        return _bpf(_BPF_PROG_LOAD, attr)

    try:
        return load(None)  # no log: the verifier is much faster without one
    except OSError as error:
        if error.errno not in (errno_codes.EACCES, errno_codes.EINVAL):  # the verifier said no
            raise
        log = ctypes.create_string_buffer(_VERIFIER_LOG_SIZE)
        try:
            return load(log)
        except OSError as refused:
            tail = "\n".join(log.value.decode(errors="replace").splitlines()[-12:])
            raise OSError(refused.errno, f"{refused.strerror}; verifier:\n{tail}") from None


def run_once(program_fd: int, packet: bytes) -> int:
    """BPF_PROG_TEST_RUN: a socket filter run once on `packet` (at least an Ethernet header);
    its return value (the low 32 bits of r0). How the assembler's encodings are checked
    against the kernel: a tracepoint program cannot be run on demand."""
    data = ctypes.create_string_buffer(packet, len(packet))
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    _TEST_RUN.pack_into(attr, 0, program_fd, 0, len(packet), 0, ctypes.addressof(data))
    _bpf(_BPF_PROG_TEST_RUN, attr)
    return int(_TEST_RUN.unpack_from(attr)[1])


def attach_to_raw_tracepoint(program_fd: int, tracepoint: str) -> int:
    """Run the program at every hit of the tracepoint (any CPU, any task) until the returned
    fd is closed. Its context is the tracepoint's arguments, u64 each."""
    name = ctypes.create_string_buffer(tracepoint.encode("ascii"))
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    _RAW_TRACEPOINT_OPEN.pack_into(attr, 0, ctypes.addressof(name), program_fd)
    return _bpf(_BPF_RAW_TRACEPOINT_OPEN, attr)


class RingBuffer:
    """The consumer side of a BPF_MAP_TYPE_RINGBUF: records are read from shared pages, no
    syscall per record. The data pages are mapped twice in a row by the kernel, so a record
    that wraps around the end reads as one piece."""

    def __init__(self, map_fd: int, size: int) -> None:
        self.fd = map_fd
        self._mask = size - 1
        self._consumer = mmap.mmap(
            map_fd, _PAGE_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0
        )
        self._producer = mmap.mmap(
            map_fd, _PAGE_SIZE + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=_PAGE_SIZE
        )
        self._data = memoryview(self._producer)[_PAGE_SIZE:]

    def records(self) -> list[bytes]:
        """Every committed record not read yet, oldest first; they are consumed."""
        consumed = int.from_bytes(self._consumer[:8], "little")
        produced = int.from_bytes(self._producer[:8], "little")
        records: list[bytes] = []
        data = self._data
        while consumed < produced:
            start = consumed & self._mask
            header = int.from_bytes(data[start : start + 4], "little")
            if header & _RINGBUF_BUSY:
                break  # reserved, not committed yet: the rest comes at the next read
            length = header & ~(_RINGBUF_BUSY | _RINGBUF_DISCARD)
            if not header & _RINGBUF_DISCARD:
                body = start + RINGBUF_HEADER_SIZE
                records.append(bytes(data[body : body + length]))
            consumed += (length + RINGBUF_HEADER_SIZE + 7) & ~7
        self._consumer[:8] = consumed.to_bytes(8, "little")
        return records

    def close(self) -> None:
        self._data.release()
        self._producer.close()
        self._consumer.close()
